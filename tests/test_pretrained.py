"""The bundled models: every shipped weight file loads without pickle, says what it
was trained for (kind, subsampling mode, scales as in the CATALOGUE) and has a model card
that the README links."""
from importlib import resources
from pathlib import Path

import pytest
from safetensors import safe_open

from mzsr_fast import pretrained
from mzsr_fast.pretrained import CATALOGUE, ModelInfo, bundled_info, bundled_models, default_model, load_model

SHIPPED = [name for name, shipped in bundled_models().items() if shipped]
README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_default_model_is_shipped():
    assert default_model() in SHIPPED
    assert load_model(None)[1].name == default_model()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_matches_its_bundled_entry(name):
    """The file's own metadata (not bundled_info, which load_model puts in front) says
    what the name stands for, and the training iteration."""
    path = resources.files("mzsr_fast") / "weights" / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    info = ModelInfo.from_metadata(meta, "?")
    want = bundled_info(name)
    assert {"name", "kind", "mode", "scales"} <= set(meta) and "stage" not in meta
    assert (info.name, info.kind, info.mode, info.scales) == (name, want.kind, want.mode, want.scales)
    assert int(meta["step"]) > 0
    net, _ = load_model(name)
    assert sum(p.numel() for p in net.parameters()) == 225_091


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_has_a_card_linked_from_the_readme(name):
    card = resources.files("mzsr_fast") / "weights" / f"{name}.md"
    assert card.is_file(), f"no model card for {name}"
    assert f"mzsr_fast/weights/{name}.md" in README.read_text()


@pytest.mark.parametrize("shipped,mode,scale,expected", [
    ({"direct_x2"}, "direct", 2, "direct_x2"),
    ({"direct_x2"}, "bicubic", 2, "direct_x2"),            # nothing fits: the default
    ({"direct_x2", "bicubic_x2"}, "bicubic", 2, "bicubic_x2"),
    ({"direct_x2", "bicubic_x2"}, None, 2, "direct_x2"),    # a kernel without a mode: direct
    ({"direct_x2", "multiscale"}, "direct", 4, "multiscale"),
    ({"direct_x2", "direct_x4", "multiscale"}, "direct", 4, "direct_x4"),
    ({"direct_x2", "direct_x4"}, "bicubic", 4, "direct_x4"),  # the scale first: no bicubic x4 model exists
])
def test_default_model_follows_the_kernels_mode_and_scale(monkeypatch, shipped, mode, scale, expected):
    monkeypatch.setattr(pretrained, "bundled_models", lambda: {name: name in shipped for name in CATALOGUE})
    assert pretrained.default_model(mode, scale) == expected


@pytest.mark.parametrize("shipped,mode,steps,expected", [
    ({"direct_x2", "direct_x2_1step"}, "direct", 1, "direct_x2_1step"),
    ({"direct_x2", "direct_x2_1step"}, "direct", 10, "direct_x2"),
    ({"direct_x2", "direct_x2_1step"}, "direct", None, "direct_x2"),
    ({"direct_x2", "direct_x2_1step"}, "direct", 0, "direct_x2"),
    ({"direct_x2", "bicubic_x2", "direct_x2_1step"}, "bicubic", 1, "bicubic_x2"),  # bicubic_x2 has no one-step model
    ({"direct_x2"}, "direct", 1, "direct_x2"),
])
def test_one_step_the_default_is_the_kinds_one_step_model_where_shipped(monkeypatch, shipped, mode, steps, expected):
    monkeypatch.setattr(pretrained, "bundled_models", lambda: {name: name in shipped for name in pretrained.BUNDLED})
    assert pretrained.default_model(mode, 2, steps) == expected


def test_a_one_step_model_loads_as_its_kind_and_adapt_picks_it_for_one_step(monkeypatch, tmp_path):
    import shutil

    import torch

    import mzsr_fast
    path = tmp_path / "direct_x2_1step.safetensors"
    shutil.copy(resources.files("mzsr_fast") / "weights" / "direct_x2.safetensors", path)
    bundled_path = pretrained._bundled_path
    monkeypatch.setattr(pretrained, "_bundled_path",
                        lambda name: path if name == "direct_x2_1step" else bundled_path(name))
    net, info = load_model("direct_x2_1step")
    assert (info.name, info.kind, info.mode, info.scales) == ("direct_x2_1step", "direct_x2", "direct", (2,))
    assert pretrained.is_meta_learned(info)
    lr = torch.rand(3, 24, 24)
    _, one = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, return_model=True)
    _, ten = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, return_model=True)
    assert (one.model_info.name, ten.model_info.name) == ("direct_x2_1step-adapted", "direct_x2-adapted")


def test_the_catalogue_states_each_model_once():
    """Trainer variants, bundled models and schedules all come from CATALOGUE."""
    from mzsr_fast.train.metatrain import MetaLearner  # noqa: F401  (the trainer reads CATALOGUE)
    for name, kind in CATALOGUE.items():
        info = bundled_info(name)
        assert (info.kind, info.mode, info.scales, info.schedule) == (name, kind.mode, kind.scales, kind.schedule)
        assert all(s in kind.scales or kind.name == "multiscale" for s in kind.task_scales)
    assert CATALOGUE["direct_x4"].schedule == (0.01, 0.005, 0.005, 0.005, 0.005, 0.001)


# What each shipped model's card reports on Set5 (MZSR(10), dB, the card's own
# table), less 0.05 dB (direct_x2: issue 24's 35.80, 0.05 under its card): a model that
# scores lower has regressed, and shipping new weights means updating the card and this
# table together.
SET5_FLOORS = {  # name: (kernel preset, scale, steps n the model is for, MZSR(n) floor)
    "direct_x2": ("g_d_2.0", 2, 10, 35.80),
    "bicubic_x2": ("g_b_1.3", 2, 10, 36.02),
    "direct_x4": ("g_d_2.0", 4, 10, 30.22),
    "multiscale": ("g_d_2.0", 3, 10, 32.32),
    "direct_x2_1step": ("g_d_2.0", 2, 1, 35.50),
    "bicubic_x2_1step": ("g_b_1.3", 2, 1, 35.83),
    "direct_x4_1step": ("g_d_2.0", 4, 1, 30.16),
}
# What the ten steps must add at least (MZSR(10) - MZSR(0), dB), where the project
# promises it: the default model on Set5 g_d_2.0 (0.5 dB).
SET5_ADAPTATION_GAIN = {"direct_x2": 0.5}


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_scores_what_its_card_says_and_adaptation_never_hurts(shared_dir, name):
    from mzsr_fast.evaluation import evaluate

    kernel, scale, steps, floor = SET5_FLOORS[name]
    scores = evaluate(str(shared_dir / "data" / "Set5"), kernel, scale, sorted({0, 1, steps}), model=name)
    mean = {n: sum(s.psnr for s in scores if s.steps == n) / 5 for n in sorted({0, 1, steps})}
    assert mean[steps] >= floor, mean
    assert mean[steps] >= mean[1], mean
    # A one-step model's step is sized on the held-out split for every preset: on a kernel its
    # network already fits it may cost a little against no step, while it gains most on sharp
    # kernels (direct_x2_1step on Set5: g_d_2.0 +5.8 dB, g_d_0.2 +14.9 dB).
    assert mean[1] >= mean[0] - (0.2 if steps == 1 else 0.0), mean
    if name in SET5_ADAPTATION_GAIN:
        assert mean[steps] - mean[0] >= SET5_ADAPTATION_GAIN[name], mean


# The other presets of a one-step model: (its card's Set5 MZSR(1) less 0.05 dB, bicubic).
SET5_ONE_STEP_PRESETS = {("direct_x2_1step", "g_d_0.2"): (34.57, 30.24),
                         ("direct_x2_1step", "g_d_ani"): (34.15, 28.15)}


@pytest.mark.slow
@pytest.mark.parametrize("name,kernel", sorted(SET5_ONE_STEP_PRESETS))
def test_one_step_model_scores_its_card_on_its_other_presets_and_beats_bicubic(shared_dir, name, kernel):
    from mzsr_fast.evaluation import evaluate

    floor, bicubic = SET5_ONE_STEP_PRESETS[(name, kernel)]
    set5 = str(shared_dir / "data" / "Set5")
    one = sum(s.psnr for s in evaluate(set5, kernel, 2, [1], model=name)) / 5
    assert abs(sum(s.psnr for s in evaluate(set5, kernel, 2, [0], method="bicubic")) / 5 - bicubic) < 0.01
    assert one >= floor > bicubic, one


# The paper's Set5 presets with the models the CLI picks when none is named (a one-step
# model for --steps 1 where one is shipped, the ten-step model for --steps 10).
DEFAULT_MODEL_PRESETS = [("g_d_0.2", 2), ("g_d_2.0", 2), ("g_d_ani", 2), ("g_b_1.3", 2), ("g_d_2.0", 4)]


@pytest.mark.slow
@pytest.mark.parametrize("kernel,scale", DEFAULT_MODEL_PRESETS)
def test_default_models_ten_steps_beat_one_step_and_one_step_beats_bicubic(shared_dir, kernel, scale):
    from mzsr_fast.evaluation import evaluate

    set5 = str(shared_dir / "data" / "Set5")
    scores = evaluate(set5, kernel, scale, [1, 10])
    mean = {n: sum(s.psnr for s in scores if s.steps == n) / 5 for n in (1, 10)}
    bicubic = sum(s.psnr for s in evaluate(set5, kernel, scale, [0], method="bicubic")) / 5
    assert mean[10] >= mean[1] > bicubic, (mean, bicubic)


def test_save_model_checks_its_arguments_and_refuses_non_finite_weights(tmp_path):
    import torch

    from mzsr_fast.model import MZSRNet
    from mzsr_fast.pretrained import save_model

    net, info = MZSRNet(), ModelInfo("m")
    for args, error, message in (((net.state_dict(), info), TypeError, "net: expected an MZSRNet, got OrderedDict"),
                                 ((net, "m"), TypeError, "info: expected a ModelInfo, got str")):
        with pytest.raises(error, match=message):
            save_model(tmp_path / "m.safetensors", *args)
    with pytest.raises(ValueError, match="path: .* is a folder"):
        save_model(tmp_path, net, info)
    with pytest.raises(ValueError, match="path: the folder .*missing' does not exist"):
        save_model(tmp_path / "missing" / "m.safetensors", net, info)
    with torch.no_grad():
        net.layers[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="net: layers.0.weight holds NaN or infinite values"):
        save_model(tmp_path / "m.safetensors", net, info)
    assert not list(tmp_path.iterdir())
