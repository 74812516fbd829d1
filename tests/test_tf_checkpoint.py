"""Reading the reference's TensorFlow checkpoints: the TensorBundle reader,
load_tf_checkpoint, `mzsr-fast import-tf`, and what a bad file gets."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mzsr_fast.cli import main
from mzsr_fast.io import read_image
from mzsr_fast.metrics import psnr
from mzsr_fast.model import MZSRNet
from mzsr_fast.pretrained import load_model, load_tf_checkpoint
from mzsr_fast.resize import imresize
from mzsr_fast.tf_checkpoint import TFCheckpointError, crc32c, list_tf_checkpoint, read_tf_checkpoint
from tf_bundle import mzsr_variables, write_bundle

REPO = Path(__file__).resolve().parents[1]
REFERENCE_INIT = REPO / "training" / "reference_pretrained_x2.safetensors"
SHARED_CHECKPOINT = Path(os.environ.get("MZSR_FAST_SHARED", REPO.parent / "shared")) / "reference_weights"


@pytest.fixture
def random_state():
    return {k: v.detach().clone() for k, v in MZSRNet().state_dict().items()}


@pytest.fixture
def bundle(tmp_path, random_state):
    prefix = tmp_path / "ckpt" / "model"
    prefix.parent.mkdir()
    write_bundle(prefix, mzsr_variables(random_state))
    return prefix


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_round_trip_is_exact(bundle, random_state):
    state = load_tf_checkpoint(bundle)
    assert state.keys() == random_state.keys()
    for name, value in random_state.items():
        assert torch.equal(state[name], value), name
    MZSRNet().load_state_dict(state)


def test_reader_returns_every_variable(bundle):
    tensors = read_tf_checkpoint(bundle)
    assert tensors["MODEL/conv1/kernel"].shape == (3, 3, 3, 64)
    assert tensors["MODEL/conv8/bias/Adam_1"].dtype == np.float32
    assert tensors["global_step"].dtype == np.int32 and int(tensors["global_step"]) == 7
    assert list_tf_checkpoint(bundle)["MODEL/conv2/kernel"] == (3, 3, 64, 64)
    assert read_tf_checkpoint(bundle, names=["MODEL/conv1/bias", "absent"]).keys() == {"MODEL/conv1/bias"}


@pytest.mark.parametrize("layout", [dict(entries_per_block=5, restart_interval=3), dict(shards=3),
                                    dict(entries_per_block=1, restart_interval=1)])
def test_real_table_layouts(tmp_path, random_state, layout):
    """Several data blocks (an index of separator keys), prefix-compressed keys
    between restart points, several data shards: the same tensors back."""
    variables = mzsr_variables(random_state)
    variables["complex"] = np.array([1 + 2j, -3j], dtype=np.complex64)
    write_bundle(tmp_path / "m", variables, **layout)
    tensors = read_tf_checkpoint(tmp_path / "m")
    assert tensors.keys() == variables.keys()
    for name, value in variables.items():
        assert np.array_equal(tensors[name], value), name
    for name, value in random_state.items():
        assert torch.equal(load_tf_checkpoint(tmp_path / "m")[name], value)


def test_folder_with_a_checkpoint_file_and_several_checkpoints(tmp_path, random_state):
    write_bundle(tmp_path / "model-100", mzsr_variables(random_state))
    newer = {k: v + 1 for k, v in random_state.items()}
    write_bundle(tmp_path / "model-200", mzsr_variables(newer))
    with pytest.raises(TFCheckpointError, match="found 2 .index files"):
        load_tf_checkpoint(tmp_path)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model-200"\n'
                                         'all_model_checkpoint_paths: "model-100"\n')
    assert torch.equal(load_tf_checkpoint(tmp_path)["layers.0.bias"], newer["layers.0.bias"])


def test_prefix_index_file_or_folder(bundle):
    first = load_tf_checkpoint(bundle)["layers.3.weight"]
    assert torch.equal(load_tf_checkpoint(f"{bundle}.index")["layers.3.weight"], first)
    assert torch.equal(load_tf_checkpoint(bundle.parent)["layers.3.weight"], first)


def _flip_byte(path, offset):
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0x40
    Path(path).write_bytes(bytes(data))


def test_bad_tensor_checksum_names_file_and_variable(bundle):
    _flip_byte(f"{bundle}.data-00000-of-00001", 1000)
    with pytest.raises(TFCheckpointError, match=r"model\.data-00000-of-00001: bad checksum of MODEL/conv"):
        load_tf_checkpoint(bundle)


def test_corrupt_index_block(bundle):
    _flip_byte(f"{bundle}.index", 20)
    with pytest.raises(TFCheckpointError, match=r"model\.index: bad checksum of the block"):
        read_tf_checkpoint(bundle)


def test_truncated_data(bundle):
    path = Path(f"{bundle}.data-00000-of-00001")
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # cuts counters and the last optimiser slot only
    load_tf_checkpoint(bundle)
    with pytest.raises(TFCheckpointError, match=r"data-00000-of-00001: truncated \(MODEL/conv8/kernel/Adam_1 ends"):
        read_tf_checkpoint(bundle)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TFCheckpointError, match=r"data-00000-of-00001: truncated \(MODEL/conv"):
        load_tf_checkpoint(bundle)


def test_truncated_index(bundle):
    path = Path(f"{bundle}.index")
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(TFCheckpointError, match=r"model\.index: "):
        read_tf_checkpoint(bundle)


def test_not_an_index(tmp_path):
    (tmp_path / "x.index").write_bytes(os.urandom(200))
    with pytest.raises(TFCheckpointError, match=r"x\.index: not a TensorFlow checkpoint index"):
        read_tf_checkpoint(tmp_path / "x")


def test_missing_files(tmp_path, bundle):
    with pytest.raises(TFCheckpointError, match="nothing.index: no such file"):
        load_tf_checkpoint(tmp_path / "nothing")
    os.remove(f"{bundle}.data-00000-of-00001")
    with pytest.raises(TFCheckpointError, match=r"model\.data-00000-of-00001: no such file"):
        load_tf_checkpoint(bundle)


def test_missing_variable(tmp_path, random_state):
    variables = mzsr_variables(random_state)
    del variables["MODEL/conv3/bias"]
    write_bundle(tmp_path / "m", variables)
    with pytest.raises(ValueError, match=r"m\.index: missing variable\(s\) MODEL/conv3/bias"):
        load_tf_checkpoint(tmp_path / "m")


def test_wrong_shape(tmp_path, random_state):
    variables = mzsr_variables(random_state)
    variables["MODEL/conv2/kernel"] = variables["MODEL/conv2/kernel"][..., :32].copy()
    write_bundle(tmp_path / "m", variables)
    with pytest.raises(ValueError, match=r"MODEL/conv2/kernel has shape \[3, 3, 64, 32\], expected \[3, 3, 64, 64\]"):
        load_tf_checkpoint(tmp_path / "m")


@pytest.mark.parametrize("extra", [{"MODEL/conv9/kernel": np.ones((3, 3, 3, 3), np.float32)}, None])
def test_checkpoint_of_another_network(tmp_path, random_state, extra):
    variables = mzsr_variables(random_state) if extra else {"generator/dense/kernel": np.ones((4, 4), np.float32)}
    variables.update(extra or {})
    write_bundle(tmp_path / "m", variables)
    with pytest.raises(ValueError, match=r"m\.index: not a checkpoint of the MZSR network"):
        load_tf_checkpoint(tmp_path / "m")


def test_non_finite_weights_refused(tmp_path, random_state):
    variables = mzsr_variables(random_state)
    variables["MODEL/conv4/bias"][5] = np.nan
    write_bundle(tmp_path / "m", variables)
    with pytest.raises(ValueError, match="MODEL/conv4/bias holds NaN"):
        load_tf_checkpoint(tmp_path / "m")


def _reference_checkpoint(tmp_path):
    """The reference's pretrained checkpoint: the shared copy next to the
    checkout where there is one, else one written from the committed import of
    it (training/reference_pretrained_x2), so the test runs anywhere."""
    if (SHARED_CHECKPOINT / "Pretrained.index").is_file():
        return SHARED_CHECKPOINT / "Pretrained"
    net, _ = load_model(str(REFERENCE_INIT))
    write_bundle(tmp_path / "Pretrained", mzsr_variables(net.state_dict()))
    return tmp_path / "Pretrained"


def test_reference_pretrained_scores_on_set5(tmp_path, shared_dir):
    """Plain bicubic x2 on Set5 (GT cropped to even size, MATLAB bicubic down
    and up, Y channel, shave 2): the reference network scores 37.48 dB. The
    committed import (the meta-training runs' start) holds the same weights."""
    state = load_tf_checkpoint(_reference_checkpoint(tmp_path))
    committed, _ = load_model(str(REFERENCE_INIT))
    for name, value in committed.state_dict().items():
        assert torch.equal(state[name], value), name
    net = MZSRNet()
    net.load_state_dict(state)
    scores = []
    for path in sorted((shared_dir / "data" / "Set5").glob("*.png")):
        gt = read_image(path, torch.float64)
        gt = gt[:, : gt.shape[1] // 2 * 2, : gt.shape[2] // 2 * 2]
        lr = torch.round(imresize(gt, scale=0.5).clamp(0, 1) * 255) / 255
        with torch.no_grad():
            sr = net(imresize(lr, scale=2, size=gt.shape[-2:]).float()[None]).clamp(0, 1)
        scores.append(psnr(sr, gt[None].float(), 2))
    assert sum(scores) / len(scores) >= 37.45


def test_import_tf_cli_makes_a_model_for_sr_and_metatrain(tmp_path, bundle, capsys):
    out = tmp_path / "imported.safetensors"
    assert main(["import-tf", str(bundle), "-o", str(out), "--mode", "direct", "--scales", "2",
                 "--schedule", "0.02,0.01,0.005"]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["mode"] == "direct" and meta["scales"] == "2" and meta["schedule"] == "0.02,0.01,0.005"
    assert "TensorFlow checkpoint model" in meta["source"]
    _, info = load_model(str(out))
    assert info.schedule == (0.02, 0.01, 0.005)
    assert main(["sr", "example-lr", "-o", str(tmp_path / "sr"), "--model", str(out), "--steps", "1"]) == 0
    assert main(["metatrain", str(REPO / "tests" / "data" / "data" / "Set5"), "--init", str(out),
                 "--out", str(tmp_path / "run"), "--iterations", "1", "--meta-batch", "1", "--task-batch", "1",
                 "--patch-size", "16", "--inner-steps", "1", "--threads", "1", "--no-progress"]) == 0


def test_import_tf_cli_defaults_to_the_kinds_reference_schedule(tmp_path, bundle):
    out = tmp_path / "x4.safetensors"
    assert main(["import-tf", str(bundle), "-o", str(out), "--scales", "4"]) == 0
    _, info = load_model(str(out))
    assert info.kind == "direct_x4" and info.schedule == (0.01, 0.005, 0.005, 0.005, 0.005, 0.001)


@pytest.mark.parametrize("extra,message", [
    (["--schedule", "0.02,x"], "--schedule: expected numbers"),
    (["--schedule", "2"], "--schedule: expected learning rates in (0, 1)"),
    (["--schedule", ""], "--schedule: expected numbers"),
    (["--schedule", "0.01,,0.02"], "--schedule: expected numbers"),
    (["--scales", "a"], "--scales: expected integers"),
    (["--scales", "1"], "scales: expected integers >= 2"),
    (["--mode", "bicubic", "--scales", "4"], "the reference released no bicubic model for scales 4; expected one of: "
                                             "direct 2 (direct_x2); bicubic 2 (bicubic_x2)"),
    (["--scales", "2,4"], "the reference released no direct model for scales 2,4"),
])
def test_import_tf_cli_bad_arguments(tmp_path, bundle, capsys, extra, message):
    assert main(["import-tf", str(bundle), "-o", str(tmp_path / "o.safetensors"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_import_tf_cli_refuses_existing_output_and_corrupt_input(tmp_path, bundle, capsys):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    assert main(["import-tf", str(bundle), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    _flip_byte(f"{bundle}.data-00000-of-00001", 10)
    assert main(["import-tf", str(bundle), "-o", str(tmp_path / "new.safetensors")]) == 2
    assert "bad checksum" in capsys.readouterr().err and not (tmp_path / "new.safetensors").exists()
