"""Test-time adaptation MZSR(n) (docs/method.md section 8)."""
import contextlib
import copy
import dataclasses
import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import mzsr_fast
from mzsr_fast import pretrained
from mzsr_fast.adapt import UnadaptedModelWarning, forward_tiled, learning_rates
from mzsr_fast.cli import example_path
from mzsr_fast.losses import task_losses
from mzsr_fast.pretrained import CATALOGUE, ModelInfo, load_model, save_model

adapt_module = importlib.import_module("mzsr_fast.adapt")  # the package's `adapt` is the function


def _small_net():
    net = mzsr_fast.MZSRNet()
    net.reset_parameters(torch.Generator().manual_seed(1))
    return net


def _straightforward(lr, kernel, scale, rates, net, mode="direct"):
    """docs/method.md section 8 written out step by step with nn.Module and torch.optim.SGD."""
    net = copy.deepcopy(net)
    son = mzsr_fast.degrade(lr[None], kernel, scale, mode=mode)
    x = mzsr_fast.imresize(son, scale=scale, size=lr.shape[-2:])
    optimizer = torch.optim.SGD(net.parameters(), lr=rates[0])
    losses = []
    for rate in rates:
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = F.l1_loss(net(x), lr[None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        sr = net(mzsr_fast.imresize(lr[None], scale=scale)).clamp(0, 1)[0]
    return sr, losses


def test_learning_rate_table():
    assert learning_rates(CATALOGUE["direct_x2"].schedule, 7) == [0.02, 0.01, 0.01, 0.01, 0.005, 0.005, 0.005]
    assert learning_rates(CATALOGUE["direct_x4"].schedule, 2) == [0.01, 0.005]
    assert learning_rates(CATALOGUE["bicubic_x2"].schedule, 0) == []


@pytest.mark.parametrize("mode", ["direct", "bicubic"])
def test_adapt_equals_straightforward_implementation(mode):
    net = _small_net()
    before = copy.deepcopy(net.state_dict())
    lr = torch.rand(3, 30, 26)
    kernel = mzsr_fast.preset("g_d_2.0").kernel
    sr, losses = mzsr_fast.adapt(lr, kernel, 2, steps=6, model=net, mode=mode, return_losses=True)
    expected_sr, expected_losses = _straightforward(lr, kernel, 2, learning_rates(CATALOGUE["direct_x2"].schedule, 6),
                                                    net, mode)
    torch.testing.assert_close(losses[0], torch.tensor(expected_losses), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sr, expected_sr, rtol=1e-4, atol=1e-5)
    assert sr.shape == (3, 60, 52)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "model must be left unchanged"


def test_zero_steps_is_plain_inference():
    net = _small_net()
    lr = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        expected = net(mzsr_fast.imresize(lr, scale=2)).clamp(0, 1)
    torch.testing.assert_close(mzsr_fast.adapt(lr, "g_d_0.2", 2, steps=0, model=net), expected)


def test_batched_equals_per_image():
    net = _small_net()
    lr = torch.rand(2, 3, 24, 22)
    kernels = torch.stack([mzsr_fast.preset("g_d_2.0").kernel, mzsr_fast.preset("g_d_ani").kernel])
    sr, losses = mzsr_fast.adapt(lr, kernels, 2, steps=2, model=net, return_losses=True)
    for i in range(2):
        single, single_losses = mzsr_fast.adapt(lr[i], kernels[i], 2, steps=2, model=net, return_losses=True)
        torch.testing.assert_close(sr[i], single, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(losses[i], single_losses[0])


def test_tiled_equals_untiled():
    net = _small_net()
    lr = torch.rand(1, 3, 40, 36)
    whole = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=net)
    tiled = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=net, tile=17)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)
    x = torch.rand(1, 3, 50, 45)
    torch.testing.assert_close(forward_tiled(net, x, 16).detach(), net(x).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize("step_search", [(), (0.5, 1.0, 2.0)])
def test_graph_step_logic_without_a_gpu(monkeypatch, windows, step_search):
    """The CUDA-graph path (WARMUP_STEPS eager steps, then replays of one
    captured step with the rate in a tensor, losses read from its static
    output, each step's inputs copied into the captured ones) with the
    capture replaced by a step that writes one static buffer: it must give
    the eager path's weights and losses exactly, for the whole images and for
    windows that change every step (a pixel budget), with and without the
    step search after each step."""
    net = _small_net()
    params = {n: p.detach() for n, p in net.named_parameters()}
    rates = learning_rates(CATALOGUE["direct_x2"].schedule, adapt_module.WARMUP_STEPS + 3)
    g = torch.Generator().manual_seed(0)
    if windows:  # step i: its own 3 windows of 12x10 and loss masks
        steps = [(torch.rand(2, 3, 3, 12, 10, generator=g), torch.rand(2, 3, 3, 12, 10, generator=g),
                  (torch.rand(2, 3, 1, 12, 10, generator=g) > 0.3).float()) for _ in rates]
        inputs = lambda i: tuple(t.clone() for t in steps[i])  # noqa: E731  (new tensors, as a budget's draw)
    else:
        x, target = torch.rand(2, 1, 3, 20, 18, generator=g), torch.rand(2, 1, 3, 20, 18, generator=g)
        inputs = lambda i: (x, target, None)  # noqa: E731
    captured = []

    def static_capture(step, device):
        static = torch.empty(2)
        captured.append(static)

        def replay():
            static.copy_(step())
            return static

        return replay

    monkeypatch.setattr(adapt_module, "_side_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(adapt_module, "_capture", static_capture)
    eager_weights, eager_losses = adapt_module._adapt_weights(params, 2, inputs, rates, "fp32",
                                                              step_search=step_search)
    graph_weights, graph_losses = adapt_module._adapt_weights(params, 2, inputs, rates, "fp32", cuda_graph=True,
                                                              step_search=step_search)
    assert len(captured) == 1
    torch.testing.assert_close(graph_losses, eager_losses, rtol=0, atol=0)
    for name in params:
        torch.testing.assert_close(graph_weights[name], eager_weights[name], rtol=0, atol=0)
    short = rates[:adapt_module.WARMUP_STEPS]  # nothing left to replay: no capture
    adapt_module._adapt_weights(params, 2, inputs, short, "fp32", cuda_graph=True)
    assert len(captured) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_equals_eager_on_cuda(precision):
    net = _small_net().cuda()
    lr = torch.rand(2, 3, 40, 36, device="cuda")
    eager, eager_losses = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=6, model=net, precision=precision,
                                          return_losses=True)
    graphed, graph_losses = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=6, model=net, precision=precision,
                                            return_losses=True, cuda_graph=True)
    # the same kernels in the same order: equal up to nondeterministic reductions (of bf16 sums in bf16)
    tolerance = dict(rtol=1e-4, atol=1e-5) if precision == "fp32" else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(graph_losses, eager_losses, **tolerance)
    torch.testing.assert_close(graphed, eager, **tolerance)


def _conv_tf32_setting():
    conv = getattr(torch.backends.cudnn, "conv", None)
    return conv.fp32_precision if conv is not None and hasattr(conv, "fp32_precision") \
        else ("tf32" if torch.backends.cudnn.allow_tf32 else "ieee")


@pytest.mark.parametrize("precision, expected", [("fp32", "ieee"), ("tf32", "tf32")])
def test_fp32_is_ieee_and_tf32_is_asked_for(monkeypatch, precision, expected):
    """precision="fp32" runs the network with TF32 off in CUDA convolutions (so
    a GPU matches the CPU up to summation order), "tf32" with it on; torch's
    own setting is restored after. On the CPU tf32 takes the Winograd
    forward and input-gradient convolutions in the steps too: fp32's numbers
    up to float rounding (two steps of sign-of-error gradients can carry a
    flipped sign: a few 1e-6 at most)."""
    seen = []
    forward = adapt_module.stacked_forward

    def recording(*args, **kwargs):
        seen.append(_conv_tf32_setting())
        return forward(*args, **kwargs)

    before = _conv_tf32_setting()
    monkeypatch.setattr(adapt_module, "stacked_forward", recording)
    net = _small_net()
    lr = torch.rand(1, 3, 24, 24)
    out = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, model=net, precision=precision)
    assert seen and set(seen) == {expected}
    assert _conv_tf32_setting() == before
    fp32 = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, model=net, precision="fp32")
    torch.testing.assert_close(out, fp32, rtol=0, atol=0 if precision == "fp32" else 1e-5)


def test_fp32_inference_takes_winograd_and_stays_within_float_rounding(monkeypatch):
    """adapt's fp32 inference runs the 64 -> 64 layers by Winograd (6 calls per
    tile; the steps' forward passes do not); with it turned off (oneDNN's direct
    convolutions, in the steps' weight gradients too) the output moves by float32
    rounding through six layers and two steps (measured 2-7e-7 on the example
    images with the reference's pretrained network)."""
    from mzsr_fast import stacked
    from mzsr_fast.ops import conv3x3_winograd as winograd

    if not winograd.winograd_pays(torch.zeros(1, 64, 1, 1), torch.zeros(64, 64, 3, 3)):
        pytest.skip("the Winograd kernel is not built")
    calls = []
    original = stacked.conv3x3_winograd
    monkeypatch.setattr(stacked, "conv3x3_winograd", lambda *a, **k: calls.append(1) or original(*a, **k))
    net, lr = _small_net(), torch.rand(3, 25, 27, generator=torch.Generator().manual_seed(2))
    fast = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, model=net)
    assert len(calls) == 6  # one tile, six layers
    monkeypatch.setattr(winograd, "USE_WINOGRAD_FROM", 10 ** 9)
    direct = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, model=net)
    assert len(calls) == 6
    torch.testing.assert_close(fast, direct, rtol=0, atol=2e-6)


def test_bf16_close_to_fp32():
    net = _small_net()
    lr = torch.rand(1, 3, 24, 24)
    fp32 = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, model=net)
    bf16 = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, model=net, precision="bf16")
    assert (bf16 - fp32).abs().mean() < 0.02


def test_backprojection_keeps_range_and_consistency():
    net = _small_net()
    lr = torch.rand(1, 3, 24, 24)
    sr = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=0, model=net, backprojection=True)
    plain = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=0, model=net)
    down = lambda x: mzsr_fast.imresize(x, scale=0.5, size=(24, 24))
    assert (down(sr) - lr).abs().mean() < (down(plain) - lr).abs().mean()
    assert sr.min() >= 0 and sr.max() <= 1


def test_preset_of_another_subsampling_mode_warns():
    net = _small_net()
    net.model_info = ModelInfo("mine", "direct_x2", "direct", (2,))
    lr = torch.rand(3, 24, 24)
    with pytest.warns(UserWarning, match=r"kernel: the preset comes with bicubic subsampling, but the model 'mine' "
                                         r"adapts with direct subsampling; the shipped 'bicubic_x2_1step' fits it"):
        mzsr_fast.adapt(lr, "g_b_1.3", 2, steps=1, model=net)
    with pytest.warns(UserWarning, match="the shipped 'bicubic_x2' fits it"):  # the hint follows steps and scale
        mzsr_fast.adapt(lr, "g_b_1.3", 2, steps=2, model=net)
    net.model_info = ModelInfo("mine", "direct_x4", "direct", (4,))
    with pytest.warns(UserWarning, match="; no bicubic model is shipped for x4"):
        mzsr_fast.adapt(lr, "g_b_1.3", 4, steps=1, model=net)
    net.model_info = ModelInfo("mine", "direct_x2", "direct", (2,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mzsr_fast.adapt(lr, "g_b_1.3", 2, steps=1, model=net, mode="bicubic")  # explicit: no warning
        mzsr_fast.adapt(lr, "g_b_1.3", 2, steps=0, model=net)  # nothing adapts: the mode does not matter
        mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=net)


@pytest.mark.filterwarnings("ignore::mzsr_fast.adapt.UnadaptedModelWarning")
def test_no_model_asks_for_the_bundled_model_of_the_kernels_mode(monkeypatch):
    asked = []
    monkeypatch.setattr(pretrained, "default_model",
                        lambda mode, scale, steps: asked.append((mode, scale)) or "direct_x2")
    lr = torch.rand(3, 24, 24)
    mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=0)
    mzsr_fast.adapt(lr, mzsr_fast.preset("g_d_2.0").kernel, 2, steps=0)
    mzsr_fast.adapt(lr, "g_b_1.3", 2, steps=0)
    mzsr_fast.adapt(lr, mzsr_fast.preset("g_d_2.0").kernel, 2, steps=0, mode="bicubic")
    assert asked == [("direct", 2), (None, 2), ("bicubic", 2), ("bicubic", 2)]


def test_saved_model_round_trip(tmp_path):
    net = _small_net()
    save_model(tmp_path / "m.safetensors", net, ModelInfo("mine", "direct_x4", "direct", (4,)))
    loaded, info = load_model(tmp_path / "m.safetensors")
    assert info.kind == "direct_x4" and info.scales == (4,) and info.name == "mine"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match=r"scale: the model 'mine' was trained for scales \(4,\), got 2"):
        mzsr_fast.adapt(torch.rand(3, 24, 24), "g_d_2.0", 2, model=str(tmp_path / "m.safetensors"))


def _scaled_net(factor):
    """A net whose outputs overflow float32 for factor 1e6 (eight layers: weights^8)."""
    net = _small_net()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(factor)
    return net


def _nan_net():
    net = _small_net()
    with torch.no_grad():
        net.layers[0].bias.fill_(float("nan"))
    return net


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=-1), "steps: expected an integer >= 0"),
    (dict(scale=1.5), "scale: expected an integer >= 1"),
    (dict(kernel="nope"), "kernel: 'nope' is neither a preset"),
    (dict(lr=torch.rand(3, 10, 10)), r"lr: image of 10x10 \(height x width\) is smaller than the 21x21 kernel"),
    (dict(lr=torch.full((3, 24, 24), float("nan"))), "lr: expected finite values"),
    (dict(precision="fp8"), "precision: expected one of"),
    (dict(schedule=[-1.0]), "schedule: expected per-step learning rates"),
    (dict(schedule=[float("inf")]), r"schedule: expected per-step learning rates in \[0, 1\)"),
    (dict(schedule=[0.01, 1e6]), r"schedule: expected per-step learning rates in \[0, 1\)"),
    (dict(model=_scaled_net(1e6), steps=2), r"the adaptation diverged: loss before each step nan, nan with "
                                            r"learning rates \[0.02, 0.01\]"),
    (dict(model=_nan_net()), "model: layers.0.bias: expected finite values"),
    (dict(mode="area"), "mode: expected 'direct' or 'bicubic'"),
    (dict(model=3), "model: expected None, a bundled name"),
    (dict(model="missing.safetensors"), "model: 'missing.safetensors' is neither"),
    (dict(cuda_graph=1), "cuda_graph: expected True or False"),
    (dict(cuda_graph=True), "cuda_graph: needs lr on a CUDA device, got cpu"),
    (dict(step_search=(0.5, 0)), "step_search: expected None"),
    (dict(step_search=[float("nan")]), "step_search: expected None"),
    (dict(step_search="0.5,2"), "step_search: expected None"),
    (dict(step_search=(True,)), "step_search: expected None"),
    (dict(adapt_loss="L1"), r"adapt_loss: expected one of \('l1', 'charbonnier', 'mse'\), got 'L1'"),
    (dict(lr=torch.rand(1, 24, 24)), r"lr: expected 3 channels \(RGB\) \[3, H, W\], got 1 .* repeat its channel"),
    (dict(lr=torch.rand(2, 4, 24, 24)), r"lr: expected 3 channels \(RGB\) \[3, H, W\], got 4"),
    (dict(lr=torch.rand(24, 24, 3)), r"got 24 in shape \(24, 24, 3\) \(an \[H, W, 3\] image\? permute it"),
    (dict(lr=[torch.rand(3, 24, 24), torch.rand(1, 24, 24)]), r"lr\[1\]: expected 3 channels"),
    (dict(kernel=None), "kernel: expected a preset name, .* got NoneType"),
    (dict(kernel=[[1, "a"], [2, 3]]), r"kernel: expected a \[k, k\] array of numbers"),
    (dict(seed=2 ** 70), r"seed: expected an integer in \[0, 2\*\*63\)"),
    (dict(seed=1.5), r"seed: expected an integer in \[0, 2\*\*63\)"),
    (dict(seed=-1), r"seed: expected an integer in \[0, 2\*\*63\)"),
    (dict(tile=0), "tile: expected a positive integer"),
])
def test_bad_input(kwargs, match):
    call = dict(lr=torch.rand(3, 24, 24), kernel="g_d_2.0", scale=2, steps=1, model=_small_net())
    call.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        mzsr_fast.adapt(**call)


def test_a_finite_but_diverging_adaptation_warns():
    lr = _example_crops()[0]
    with pytest.warns(UserWarning, match="the adaptation diverged: loss before each step .* with learning rates"):
        mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model="direct_x2", schedule=[0.99], step_search=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model="direct_x2")


def test_numpy_integers_count_as_integers():
    import numpy as np

    lr, net = torch.rand(3, 24, 24), _small_net()
    plain = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=net, adapt_pixels=0)
    same = mzsr_fast.adapt(lr, "g_d_2.0", np.int64(2), steps=np.int64(1), model=net, adapt_pixels=np.int32(0),
                           seed=np.int64(3))
    assert torch.equal(plain, same)


def test_a_scale_no_shipped_model_serves_says_so():
    with pytest.raises(ValueError, match="scale: the shipped models serve scales 2, 3, 4, got 5"):
        mzsr_fast.adapt(torch.rand(3, 24, 24), "g_d_2.0", 5, steps=1)
    with pytest.raises(ValueError, match="scale: the model 'direct_x2' was trained for scales"):
        mzsr_fast.adapt(torch.rand(3, 24, 24), "g_d_2.0", 5, steps=1, model="direct_x2")


def test_a_one_step_model_asked_for_more_steps_warns_and_names_the_kinds_model():
    lr = torch.rand(3, 24, 24)
    with pytest.warns(UserWarning, match="steps=2: the model 'direct_x2_1step' is sized for one step; for more "
                                         "use 'direct_x2'"):
        mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, model="direct_x2_1step")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model="direct_x2_1step")
        mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=2, model="direct_x2_1step", schedule=[0.01])  # rates of its own


def test_zssr_baseline_learns_from_the_image_alone():
    from mzsr_fast.zssr import ZSSRConfig, zssr

    lr = mzsr_fast.imresize(torch.rand(1, 3, 12, 12), scale=2.5)  # smooth 30x30 image
    config = ZSSRConfig(crop_size=24, min_steps=8, policy_check_every=8, slope_range=16,
                        back_projection_iterations=2)
    sr, losses = zssr(lr, "g_d_2.0", 2, steps=40, config=config, return_losses=True,
                      generator=torch.Generator().manual_seed(0))
    assert sr.shape == (1, 3, 60, 60) and 0 <= sr.min() and sr.max() <= 1
    assert sum(losses[-5:]) < sum(losses[:5])
    with pytest.raises(ValueError, match="steps: expected an integer >= 0"):
        zssr(lr, "g_d_2.0", 2, steps=-3)


def test_per_tensor_schedule_equals_scalar_one_when_uniform_and_updates_only_rated_tensors():
    net = _small_net()
    lr = torch.rand(3, 25, 23)
    kernel = mzsr_fast.preset("g_d_2.0").kernel
    n = len(mzsr_fast.model.PARAMETER_NAMES)
    scalar = mzsr_fast.adapt(lr, kernel, 2, steps=3, model=net, schedule=[0.02, 0.01])
    table = mzsr_fast.adapt(lr, kernel, 2, steps=3, model=net, schedule=[(0.02,) * n, (0.01,) * n])
    torch.testing.assert_close(table, scalar, rtol=0, atol=0)
    # rate 0 on every tensor but the last bias: the output moves by one constant per channel
    only_last_bias = tuple(0.0 for _ in range(n - 1)) + (0.05,)
    adapted = mzsr_fast.adapt(lr, kernel, 2, steps=2, model=net, schedule=[only_last_bias])
    with torch.no_grad():
        plain = net(mzsr_fast.imresize(lr[None], scale=2))[0]
    shift = adapted - plain
    inside = (adapted > 0) & (adapted < 1) & (plain > 0) & (plain < 1)
    for c in range(3):
        moved = shift[c][inside[c]]
        assert moved.abs().max() > 1e-4
        torch.testing.assert_close(moved, moved.mean().expand_as(moved), rtol=0, atol=1e-6)


@pytest.mark.parametrize("schedule", [[float("inf")], [(0.01,) * 3], [-0.1], ["x"]])
def test_bad_schedule_names_the_argument(schedule):
    with pytest.raises(ValueError, match="schedule: expected per-step learning rates"):
        mzsr_fast.adapt(torch.rand(3, 25, 23), "g_d_2.0", 2, steps=1, model=_small_net(), schedule=schedule)


def test_model_file_round_trips_a_per_tensor_schedule(tmp_path):
    n = len(mzsr_fast.model.PARAMETER_NAMES)
    table = (tuple(0.001 * (i + 1) for i in range(n)), tuple(0.0 for _ in range(n)))
    save_model(tmp_path / "m.safetensors", _small_net(), ModelInfo("m", own_schedule=table))
    _, info = load_model(str(tmp_path / "m.safetensors"))
    assert info.schedule == table
    assert pretrained.parse_schedule(pretrained.format_schedule(table)) == table
    with pytest.raises(ValueError, match="a per-tensor step needs 16 rates"):
        pretrained.parse_schedule("0.1,0.2;0.1,0.2")
    for text in ("0.01,,0.02", ""):  # an empty field is an error, not dropped
        with pytest.raises(ValueError, match="schedule: expected numbers separated by commas"):
            pretrained.parse_schedule(text)


def test_model_file_round_trips_its_adaptation_loss(tmp_path):
    save_model(tmp_path / "m.safetensors", _small_net(), ModelInfo("m", adapt_loss="charbonnier"))
    assert load_model(str(tmp_path / "m.safetensors"))[1].adapt_loss == "charbonnier"
    save_model(tmp_path / "l1.safetensors", _small_net(), ModelInfo("l1"))
    with safe_open(str(tmp_path / "l1.safetensors"), framework="pt") as f:
        assert "adapt_loss" not in f.metadata()  # L1 files read as before
    assert load_model(str(tmp_path / "l1.safetensors"))[1].adapt_loss == "l1"
    with pytest.raises(ValueError, match=r"metadata adapt_loss='huber': expected one of \('l1', 'charbonnier'"):
        ModelInfo.from_metadata({"adapt_loss": "huber"}, "m", source="m.safetensors")


def test_adaptation_descends_the_models_loss_unless_one_is_given():
    """A model whose info says charbonnier adapts with it (the loss before the
    step is losses.task_losses of the unadapted network on the son -> LR
    pair); adapt_loss overrides it either way; L1 and Charbonnier differ."""
    net, info = load_model("direct_x2_1step")
    assert info.adapt_loss == "charbonnier"
    net.model_info = dataclasses.replace(info, adapt_loss="l1")
    crops, kernel = _example_crops(), mzsr_fast.preset("g_d_0.2").kernel.float()
    l1 = mzsr_fast.adapt(crops, kernel, 2, 1, model=net)
    smooth, losses = mzsr_fast.adapt(crops, kernel, 2, 1, model=net, adapt_loss="charbonnier", return_losses=True)
    assert (smooth - l1).abs().max() > 1e-3
    charbonnier_net = copy.deepcopy(net)
    charbonnier_net.model_info = info
    assert torch.equal(mzsr_fast.adapt(crops, kernel, 2, 1, model=charbonnier_net), smooth)
    assert torch.equal(mzsr_fast.adapt(crops, kernel, 2, 1, model=charbonnier_net, adapt_loss="l1"), l1)
    assert mzsr_fast.adapt_model(crops[0], kernel, 2, 1, model=charbonnier_net).model_info.adapt_loss == "charbonnier"
    for i in range(2):
        x = adapt_module._son_up(crops[i], kernel, 2, "direct", None)
        with torch.no_grad():
            expected = task_losses("charbonnier", net(x)[None], crops[i][None, None])
        torch.testing.assert_close(losses[i, :1], expected, rtol=1e-5, atol=0)


def test_images_on_the_0_to_255_scale_warn():
    lr = torch.rand(3, 24, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mzsr_fast.adapt(lr, "g_d_2.0", steps=1, model=_small_net())
    with pytest.warns(UserWarning, match=r"lr: values from .* expected an image in \[0, 1\] \(8-bit values\? divide") as seen:
        mzsr_fast.adapt(lr * 255, "g_d_2.0", steps=1, model=_small_net())
    assert len([w for w in seen if "values from" in str(w.message)]) == 1  # said once, of lr, not again of its son


def test_zssr_warns_for_images_on_the_0_to_255_scale():
    from mzsr_fast.zssr import zssr

    with pytest.warns(UserWarning, match=r"lr: values from .* expected an image in \[0, 1\]"):
        zssr(torch.rand(3, 24, 24) * 255, "g_d_2.0", 2, steps=0)


def test_steps_0_with_kernel_auto_estimates_nothing(monkeypatch):
    """MZSR(0) never degrades the image, so kernel="auto" estimates no kernel
    for it: the same SR as with any kernel."""
    from mzsr_fast import blind

    def refused(*args, **kwargs):
        raise AssertionError("estimate_kernel called for steps=0")

    monkeypatch.setattr(blind, "estimate_kernel", refused)
    net = _small_net()
    lr = torch.rand(3, 40, 36)
    torch.testing.assert_close(mzsr_fast.adapt(lr, "auto", 2, steps=0, model=net),
                               mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=0, model=net), rtol=0, atol=0)


def test_final_inference_is_tiled_by_default(monkeypatch):
    net = _small_net()
    lr = torch.rand(1, 3, 40, 36)
    whole = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=net, tile=10 ** 6)
    tiles, untouched = [], adapt_module.upscale_tiled
    monkeypatch.setattr(adapt_module, "AUTO_TILE", 32)
    monkeypatch.setattr(adapt_module, "upscale_tiled",
                        lambda fn, lr, scale, tile, **kw: tiles.append(tile) or untouched(fn, lr, scale, tile, **kw))
    auto = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=net)
    assert tiles == [32]
    torch.testing.assert_close(auto, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("height, width, tile, margin",
                         [(40, 36, 16, 8), (61, 100, 32, 5), (20, 90, 64, 8), (7, 7, 3, 8), (1030, 1030, 1024, 8)])
def test_tile_windows_are_one_size_and_hold_each_tile_with_its_context(height, width, tile, margin):
    """ceil(side / tile) tiles per side of near-equal length, every window of
    one size (malloc reuses one tile's maps for the next) holding its tile
    with `margin` pixels around it wherever the image has them; the tiles
    cover the image once."""
    covered = torch.zeros(height, width, dtype=torch.int)
    sizes, heights, widths = set(), set(), set()
    for (top, left, bottom, right), (t0, l0, t1, l1) in adapt_module._tiles(height, width, tile, margin):
        covered[top:bottom, left:right] += 1
        sizes.add((t1 - t0, l1 - l0))
        heights.add(bottom - top)
        widths.add(right - left)
        assert 0 <= t0 <= max(top - margin, 0) and min(bottom + margin, height) <= t1 <= height
        assert 0 <= l0 <= max(left - margin, 0) and min(right + margin, width) <= l1 <= width
    assert len(sizes) == 1 and bool((covered == 1).all())
    rows, cols = -(-height // tile), -(-width // tile)
    assert len(list(adapt_module._tiles(height, width, tile, margin))) == rows * cols
    assert max(heights) <= tile and max(widths) <= tile
    assert max(heights) - min(heights) < rows and max(widths) - min(widths) < cols  # no thin last tile


@pytest.mark.parametrize("tile, given_back", [(80, 0), (48, 1)])
def test_kept_memory_is_given_back_after_a_tiled_inference_only(monkeypatch, tile, given_back):
    """One pass per image: malloc keeps the maps for a next call (3-6% faster);
    after several tiles (a large output follows) they go back to the system."""
    calls = []
    monkeypatch.setattr(adapt_module, "give_back", lambda: calls.append(1))
    mzsr_fast.adapt(torch.rand(3, 40, 36), "g_d_2.0", 2, steps=1, model=_small_net(), tile=tile)
    assert len(calls) == given_back


def test_an_image_too_large_for_memory_is_refused(monkeypatch):
    monkeypatch.setattr(adapt_module, "available_memory", lambda device: 4 * 2 ** 20)
    lr = torch.rand(3, 48, 48)
    with pytest.raises(ValueError, match=r"lr: 48x48 \(height x width\) x2 needs about 6 MiB for the adaptation"):
        mzsr_fast.adapt(lr, "g_d_2.0", steps=1, model=_small_net(), tile=16, adapt_pixels=0)
    mzsr_fast.adapt(lr, "g_d_2.0", steps=0, model=_small_net(), tile=16)  # the output and a tile fit


def test_steps_0_with_a_meta_learned_model_warns_and_names_what_to_use():
    lr = torch.rand(3, 24, 24)
    with pytest.warns(UnadaptedModelWarning,
                      match=r"steps=0: the model 'direct_x2' is meta-learned to be adapted .* use steps >= 1"):
        mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=0, model="direct_x2")
    net = _small_net()
    for name, warns in (("metatrain-direct_x2", True), ("reference_pretrained_x2", False), ("mine", False)):
        net.model_info = ModelInfo(name, "direct_x2", "direct", (2,))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=0, model=net)
            mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=net)  # adapted: never a warning
        assert [w.category.__name__ for w in caught] == (["UnadaptedModelWarning"] if warns else []), name


def _example_crops():
    """Two 40x44 crops of the example LR image, [2, 3, 40, 44]."""
    lr = mzsr_fast.io.read_image(example_path("example-lr"))
    return torch.stack([lr[:, :40, :44], lr[:, 60:100, 50:94]])


def test_step_search_keeps_the_multiple_with_the_lowest_loss_after_the_step():
    """MZSR(1) with step_search: each image's output is that of the scheduled
    step times the multiple whose L1 loss on the central 32x32 window of the
    son -> LR pair after the step is lowest (SEARCH_MIN_SIDE: half of each
    side of these 40x44 crops would be less), to float rounding; per image in
    a batch (two kernels, so the images choose differently); adapt_model keeps
    the same weights; (1.0,) is no search, bit for bit. The model:
    direct_x2_1step with an L1 step of 0.13 in layers 0-5 (on it these crops
    choose differently)."""
    net, info = load_model("direct_x2_1step")
    info = dataclasses.replace(info, adapt_loss="l1", own_schedule=((0.13,) * 12 + (0.065, 0.065, 0.0325, 0.0325),),
                               step_search=())
    net.model_info = info
    crops, kernels = _example_crops(), torch.stack([mzsr_fast.preset(n).kernel.float() for n in ("g_d_2.0", "g_d_0.2")])
    first = info.schedule[0]
    multiples = adapt_module.STEP_SEARCH
    searched = mzsr_fast.adapt(crops, kernels, 2, 1, model=net, step_search=multiples)
    chosen = []
    for i in range(2):
        son_up = adapt_module._son_up(crops[i], kernels[i], 2, "direct", None)  # [1, 3, 40, 44]
        x, target = son_up[..., 4:36, 6:38], crops[i][None, :, 4:36, 6:38]
        tries = {}
        for m in multiples:
            stepped = mzsr_fast.adapt_model(crops[i], kernels[i], 2, 1, model=net, schedule=[tuple(m * r for r in first)])
            with torch.no_grad():
                window_loss = float((stepped(x) - target).abs().mean())
            tries[m] = (window_loss, mzsr_fast.adapt(crops[i], kernels[i], 2, 0, model=stepped))
        best = min(multiples, key=lambda m: tries[m][0])
        chosen.append(best)
        torch.testing.assert_close(searched[i], tries[best][1], rtol=0, atol=1e-5)
    assert len(set(chosen)) == 2, chosen
    assert torch.equal(mzsr_fast.adapt(crops, kernels, 2, 1, model=net, step_search=True), searched)  # STEP_SEARCH
    adapted = mzsr_fast.adapt_model(crops[1], kernels[1], 2, 1, model=net, step_search=True)
    assert torch.equal(mzsr_fast.adapt(crops[1], kernels[1], 2, 0, model=adapted), searched[1])
    plain = mzsr_fast.adapt(crops, kernels, 2, 1, model=net)
    assert torch.equal(mzsr_fast.adapt(crops, kernels, 2, 1, model=net, step_search=(1.0,)), plain)
    # a multiple that diverges (weights of 1e30 times the step: a non-finite loss) is never kept
    assert torch.equal(mzsr_fast.adapt(crops, kernels, 2, 1, model=net, step_search=(1e30, 1.0)), plain)


@pytest.mark.parametrize("h, w, window", [(96, 181, (48, 90)), (40, 44, (32, 32)), (20, 300, (20, 150)), (9, 9, (9, 9))])
def test_search_window_is_the_central_half_of_each_side_but_no_less_than_32(h, w, window):
    x, mask = torch.rand(2, 3, 3, h, w), torch.rand(2, 3, 1, h, w)
    cropped_x, none, cropped_mask = adapt_module._search_window(x, None, mask)
    assert none is None and cropped_x.shape[-2:] == cropped_mask.shape[-2:] == window
    top, left = (h - window[0]) // 2, (w - window[1]) // 2
    assert torch.equal(cropped_x, x[..., top:top + window[0], left:left + window[1]])
    assert torch.equal(cropped_mask, mask[..., top:top + window[0], left:left + window[1]])


def test_the_models_step_search_is_the_default_and_false_turns_it_off():
    """A model whose info asks for a step search adapts with it unless
    step_search=False; the adapted network records the loss and search its
    steps used."""
    net, info = load_model("direct_x2_1step")
    crop = _example_crops()[1]
    net.model_info = dataclasses.replace(info, step_search=())
    plain = mzsr_fast.adapt(crop, "g_d_0.2", 2, 1, model=net)
    searched = mzsr_fast.adapt(crop, "g_d_0.2", 2, 1, model=net, step_search=(0.5, 2.0))
    assert not torch.equal(plain, searched)
    net.model_info = dataclasses.replace(info, step_search=(0.5, 2.0))
    assert torch.equal(mzsr_fast.adapt(crop, "g_d_0.2", 2, 1, model=net), searched)
    assert torch.equal(mzsr_fast.adapt(crop, "g_d_0.2", 2, 1, model=net, step_search=False), plain)
    assert mzsr_fast.adapt_model(crop, "g_d_0.2", 2, 1, model=net).model_info.step_search == (0.5, 2.0)
    adapted = mzsr_fast.adapt_model(crop, "g_d_0.2", 2, 1, model=net, step_search=False, adapt_loss="mse")
    assert (adapted.model_info.step_search, adapted.model_info.adapt_loss) == ((), "mse")


def test_step_search_compares_the_multiples_by_the_adaptation_loss(monkeypatch):
    net, _ = load_model("direct_x2_1step")
    seen = []
    search_step = adapt_module._search_step

    def recorded(*args):
        seen.append(args[-1])
        return search_step(*args)

    monkeypatch.setattr(adapt_module, "_search_step", recorded)
    for loss in ("l1", "charbonnier", None):  # None: the model's, charbonnier
        mzsr_fast.adapt(_example_crops()[0], "g_d_2.0", 2, 2, model=net, step_search=True, adapt_loss=loss)
    assert seen == ["l1", "l1", "charbonnier", "charbonnier", "charbonnier", "charbonnier"]
