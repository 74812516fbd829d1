"""Adaptation on a pixel budget (mzsr_fast.budget, adapt(adapt_pixels=...)), shared
adaptation of several images, the adapted model, and the tiled upscaling."""
import importlib
import math

import pytest
import torch

import mzsr_fast
adapt_module = importlib.import_module("mzsr_fast.adapt")
from mzsr_fast.adapt import RECEPTIVE_RADIUS, upscale_tiled
from mzsr_fast.blind import KernelEstimate, joint_estimate
from mzsr_fast.budget import GRID, MIN_PIXELS, Budget, texture_weights
from mzsr_fast.model import MZSRNet, functional_forward
from mzsr_fast.pretrained import ModelInfo, load_model, save_model
from mzsr_fast.resize import imresize


def _net(seed=0) -> MZSRNet:
    """A small-weight network that adapts fast and stays in range."""
    net = MZSRNet()
    net.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.3)
    net.model_info = ModelInfo("test", "direct_x2", "direct", (2,))
    return net


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    smooth = 0.5 + 0.3 * torch.sin(x / 5.0 + seed) * torch.cos(y / 7.0)
    return (smooth + 0.1 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


# -- the plan -------------------------------------------------------------

def test_an_image_within_the_budget_is_adapted_whole():
    assert Budget.plan([[(3, 100, 100)]], 10_000, 8) is None
    assert Budget.plan([[(3, 100, 100)], [(3, 100, 100)]], 10_000, 8) is None  # per task
    assert Budget.plan([[(3, 50, 50), (3, 50, 50)]], 5000, 8) is None  # one shared task of 5,000 pixels
    assert Budget.plan([[(3, 50, 50), (3, 50, 50)]], 4999, 8) is not None
    assert Budget.plan([[(3, 50, 50), (3, 40, 50)]], 10_000, 8) is not None  # different sizes: windows


@pytest.mark.parametrize("h,w,pixels", [(300, 301, 65536), (1000, 37, 4096), (41, 999, 4096), (97, 113, 1024),
                                        (260, 270, 20_000)])
def test_windows_fit_the_image_and_the_budget(h, w, pixels):
    plan = Budget.plan([[(3, h, w)]], pixels, 8)
    assert plan.wh <= h and plan.ww <= w
    assert plan.count * plan.wh * plan.ww <= pixels
    assert plan.count * plan.wh * plan.ww > pixels / 4  # not needlessly small
    windows = plan.draw([[texture_weights(torch.rand(3, h, w), plan)]], torch.Generator().manual_seed(0))
    assert windows.shape == (1, plan.count, 3)
    top, left = windows[..., 1], windows[..., 2]
    assert bool((top >= 0).all() and (top + plan.wh <= h).all() and (left >= 0).all() and (left + plan.ww <= w).all())


def test_every_edge_of_the_image_can_be_drawn():
    plan = Budget.plan([[(3, 100, 90)]], 1024, 8)
    weights = [[torch.ones(plan.positions(100, 90), dtype=torch.float64)]]
    plan = Budget(plan.sizes, plan.wh, plan.ww, 2000, 8)
    windows = plan.draw(weights, torch.Generator().manual_seed(1))[0]
    assert {0, 100 - plan.wh} <= set(windows[:, 1].tolist())
    assert {0, 90 - plan.ww} <= set(windows[:, 2].tolist())


def test_texture_weights_are_the_mean_gradient_under_each_window():
    """Exact for windows of whole GRID blocks; others round to whole blocks."""
    y = torch.rand(3, 48, 64, dtype=torch.float64)
    plan = Budget(((tuple((48, 64)),),), 32, 24, 1, 8)
    weights = texture_weights(y, plan)
    assert weights.shape == plan.positions(48, 64) == (3, 6)
    magnitude = torch.zeros(48, 64, dtype=torch.float64)
    magnitude[:, :-1] += (y[:, :, 1:] - y[:, :, :-1]).abs().sum(0)
    magnitude[:-1, :] += (y[:, 1:, :] - y[:, :-1, :]).abs().sum(0)
    floor = 0.1 * magnitude.mean()
    for i, j in [(0, 0), (1, 2), (2, 5)]:
        window = magnitude[i * GRID:i * GRID + plan.wh, j * GRID:j * GRID + plan.ww]
        torch.testing.assert_close(weights[i, j], window.mean() + floor, rtol=1e-5, atol=1e-9)
    odd = texture_weights(torch.rand(3, 45, 61), Budget.plan([[(3, 45, 61)]], 1024, 8))
    assert odd.shape == (2, 4) and bool((odd > 0).all())


def test_a_windows_son_is_the_whole_images_son_there():
    """The son of a window is made from the pixels around it alone: equal to the whole image's son there."""
    g = torch.Generator().manual_seed(0)
    for scale, mode, (h, w) in ((2, "direct", (61, 75)), (3, "direct", (70, 64)), (4, "direct", (83, 90)),
                                (2, "bicubic", (66, 59))):
        image = torch.rand(3, h, w, generator=g, dtype=torch.float64)
        kernel = mzsr_fast.gaussian_kernel(0.3, 2.0, 1.0, 21)
        whole = adapt_module._son_up(image, kernel, scale, mode, None)[0]
        for top, left in ((0, 0), (h - 20, w - 18), (h // 2 - 7, 5), (13, w // 2)):
            window = adapt_module._son_up_window(image, kernel, scale, mode, None, top, left, 20, 18)
            torch.testing.assert_close(window, whole[:, top:top + 20, left:left + 18], rtol=1e-12, atol=1e-12)


def test_textured_regions_are_drawn_more_often_than_flat_ones():
    y = torch.full((3, 64, 256), 0.5)
    y[:, :, 128:] = torch.rand(3, 64, 128, generator=torch.Generator().manual_seed(0))
    plan = Budget(((tuple((64, 256)),),), 64, 64, 400, 8)
    windows = plan.draw([[texture_weights(y, plan)]], torch.Generator().manual_seed(0))[0]
    flat = (windows[:, 2] + 64 <= 128).float().mean()  # windows on the flat half only: drawn by the floor alone
    assert flat < 0.1  # 9 of the 25 corners, each at a twentieth of a textured corner's weight: about 0.03


def test_the_loss_mask_leaves_out_the_margin_except_along_the_image_edges():
    plan = Budget(((tuple((40, 50)),),), 20, 30, 3, 4)
    windows = torch.tensor([[[0, 0, 0], [0, 10, 10], [0, 20, 20]]])  # top-left corner, inside, bottom-right corner
    mask = plan.loss_mask(windows)[0, :, 0]
    assert mask.shape == (3, 20, 30)
    assert mask[0, :16, :26].all() and not mask[0, 16:].any() and not mask[0, :, 26:].any()
    assert mask[1, 4:16, 4:26].all() and mask[1].sum() == 12 * 22
    assert mask[2, 4:, 4:].all() and mask[2].sum() == 16 * 26


def test_the_network_on_a_window_equals_the_whole_image_where_the_mask_is_one():
    """The margin is the network's receptive radius: inside it a crop's output is the whole image's."""
    net = _net()
    params = dict(net.named_parameters())
    x = torch.rand(3, 53, 47, dtype=torch.float64)
    params64 = {k: v.double() for k, v in params.items()}
    whole = functional_forward(params64, x[None])[0]
    plan = Budget(((tuple(x.shape[-2:]),),), 24, 30, 4, RECEPTIVE_RADIUS)
    windows = torch.tensor([[[0, 0, 0], [0, 10, 9], [0, 29, 17], [0, 29, 0]]])
    crops = plan.crop([[x]], windows)[0]
    mask = plan.loss_mask(windows)[0].bool()
    out = functional_forward(params64, crops)
    expected = plan.crop([[whole]], windows)[0]
    assert mask.any()
    torch.testing.assert_close(out.masked_select(mask.expand_as(out)), expected.masked_select(mask.expand_as(out)),
                               rtol=1e-12, atol=1e-12)


# -- adapt with a budget -----------------------------------------------------

def test_images_within_the_budget_give_outputs_identical_to_whole_image_adaptation():
    net = _net()
    lr = _image(40, 36)
    whole = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model=net, adapt_pixels=0)
    assert torch.equal(mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model=net, adapt_pixels=40 * 36), whole)
    assert torch.equal(mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model=net), whole)  # the default budget
    batch = torch.stack([lr, _image(40, 36, 1)])
    assert torch.equal(mzsr_fast.adapt(batch, "g_d_2.0", 2, steps=2, model=net, adapt_pixels=1440),
                       mzsr_fast.adapt(batch, "g_d_2.0", 2, steps=2, model=net, adapt_pixels=0))


def test_a_budget_is_deterministic_for_a_seed_and_close_to_whole_image_adaptation():
    net = _net()
    lr = _image(72, 80)
    whole = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model=net, adapt_pixels=0)
    a, losses = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model=net, adapt_pixels=2048, return_losses=True)
    assert torch.equal(a, mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model=net, adapt_pixels=2048))
    other = mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=3, model=net, adapt_pixels=2048, seed=1)
    assert not torch.equal(a, other)
    assert losses.shape == (1, 3) and bool(torch.isfinite(losses).all())
    assert not torch.equal(a, whole)
    assert float((a - whole).abs().mean()) < 0.01


def test_steps_0_ignore_the_budget():
    net = _net()
    lr = _image(72, 80)
    assert torch.equal(mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=0, model=net, adapt_pixels=1024),
                       mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=0, model=net, adapt_pixels=0))


@pytest.mark.parametrize("pixels", [-1, 1, MIN_PIXELS - 1, 2.5, True, "all"])
def test_a_bad_budget_names_adapt_pixels(pixels):
    with pytest.raises(ValueError, match="adapt_pixels: expected 0 .whole images. or an integer >= 1024"):
        mzsr_fast.adapt(_image(30, 30), "g_d_2.0", 2, steps=1, model=_net(), adapt_pixels=pixels)


def test_the_memory_check_knows_the_budget(monkeypatch):
    monkeypatch.setattr(adapt_module, "available_memory", lambda device: 60 * 2 ** 20)
    lr = _image(160, 160)  # whole-image adaptation: 160^2 x 2.5 KB = 64 MiB
    with pytest.raises(ValueError, match="needs about .* MiB for the adaptation .* a smaller adapt_pixels"):
        mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=_net(), adapt_pixels=0, tile=32)
    mzsr_fast.adapt(lr, "g_d_2.0", 2, steps=1, model=_net(), adapt_pixels=4096, tile=32)


# -- shared adaptation and the adapted model ------------------------------------

def test_shared_adaptation_of_images_of_any_sizes_and_the_model_it_returns(tmp_path):
    net = _net()
    images = [_image(40, 44), _image(36, 30, 1), _image(50, 41, 2)]
    srs, adapted = mzsr_fast.adapt(images, "g_d_2.0", 2, steps=2, model=net, share=True, adapt_pixels=2048,
                                   return_model=True)
    assert [tuple(sr.shape) for sr in srs] == [(3, 80, 88), (3, 72, 60), (3, 100, 82)]
    assert isinstance(adapted, MZSRNet) and adapted.model_info.name == "test-adapted"
    # the adapted network applied to any image is what the shared adaptation gave: steps=0 with it
    again = mzsr_fast.adapt(images[1], "g_d_2.0", 2, steps=0, model=adapted)
    torch.testing.assert_close(again, srs[1], rtol=0, atol=0)
    save_model(tmp_path / "adapted.safetensors", adapted, adapted.model_info)
    loaded, info = load_model(tmp_path / "adapted.safetensors")
    assert info.name == "test-adapted" and info.notes["adapted_steps"] == "2"
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), adapted.parameters()))


def test_shared_adaptation_of_images_of_one_size_within_the_budget_is_one_task_of_whole_images():
    net = _net()
    images = [_image(21, 24), _image(21, 24, 1)]  # 1,008 pixels in all: within the smallest budget
    shared = mzsr_fast.adapt(images, "g_d_2.0", 2, steps=2, model=net, share=True, adapt_pixels=MIN_PIXELS)
    whole = mzsr_fast.adapt(images, "g_d_2.0", 2, steps=2, model=net, share=True, adapt_pixels=0)
    assert all(torch.equal(a, b) for a, b in zip(shared, whole))
    alone = mzsr_fast.adapt(images, "g_d_2.0", 2, steps=2, model=net)  # a list without share: each on its own
    assert not torch.equal(alone[0], shared[0])


def test_a_shared_step_sees_no_more_pixels_than_the_largest_image(monkeypatch):
    seen = []
    plan = Budget.plan
    monkeypatch.setattr(Budget, "plan", classmethod(lambda cls, shapes, pixels, margin: seen.append(pixels)
                                                    or plan.__func__(cls, shapes, pixels, margin)))
    frames = [_image(40, 44), _image(40, 44, 1), _image(36, 30, 2)]
    mzsr_fast.adapt(frames, "g_d_2.0", 2, steps=1, model=_net(), share=True, adapt_pixels=32768)
    mzsr_fast.adapt(frames[0], "g_d_2.0", 2, steps=1, model=_net(), adapt_pixels=32768)
    assert seen == [40 * 44, 32768]


def test_shared_adaptation_refuses_one_kernel_per_image_and_whole_images_of_several_sizes():
    images = [_image(30, 32), _image(34, 30)]
    with pytest.raises(ValueError, match="kernel: share=True adapts all images with one kernel"):
        mzsr_fast.adapt(images, torch.stack([mzsr_fast.preset("g_d_2.0").kernel] * 2), 2, steps=1, model=_net(),
                        share=True)
    with pytest.raises(ValueError, match="adapt_pixels: 0 .whole images. with share=True needs images of one size"):
        mzsr_fast.adapt(images, "g_d_2.0", 2, steps=1, model=_net(), share=True, adapt_pixels=0)


def test_adapt_model_is_the_shared_adaptation_without_the_inference():
    images = [_image(40, 44), _image(36, 30, 1)]
    net = mzsr_fast.adapt_model(images, "g_d_2.0", 2, steps=2, model=_net(), adapt_pixels=2048)
    _, shared = mzsr_fast.adapt(images, "g_d_2.0", 2, steps=2, model=_net(), share=True, adapt_pixels=2048,
                                return_model=True)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), shared.parameters()))
    assert net.model_info.notes["adapted_steps"] == 2


def test_return_model_of_a_batch_gives_one_network_per_image():
    batch = torch.stack([_image(30, 32), _image(30, 32, 1)])
    srs, nets = mzsr_fast.adapt(batch, "g_d_2.0", 2, steps=1, model=_net(), return_model=True)
    assert srs.shape == (2, 3, 60, 64) and len(nets) == 2
    assert not torch.equal(nets[0].layers[0].weight, nets[1].layers[0].weight)


def test_joint_estimate_averages_the_covariances():
    e = KernelEstimate(0.5, 4.0, 1.0, "direct", "combined", 0.8, 0.1)
    same = joint_estimate([e, e])
    torch.testing.assert_close(same.kernel, e.kernel)
    crossed = joint_estimate([e, KernelEstimate(0.5 + math.pi / 2, 4.0, 1.0, "direct", "combined", 0.8, 0.1)])
    assert crossed.lambda1 == pytest.approx(2.5) and crossed.lambda2 == pytest.approx(2.5)
    weighted = joint_estimate([e, KernelEstimate(0.5, 2.0, 2.0, "direct", "combined", 0.0, 0.1)])
    torch.testing.assert_close(weighted.kernel, e.kernel)  # a zero-confidence estimate does not count


# -- tiled upscaling ------------------------------------------------------------

@pytest.mark.parametrize("scale,h,w,tile", [(2, 37, 29, 16), (3, 20, 23, 25), (4, 13, 17, 9), (2, 40, 40, 1000)])
def test_upscale_tiled_equals_upsampling_then_the_network(scale, h, w, tile):
    net = _net()
    lr = torch.rand(1, 3, h, w)
    fn = lambda x: net(x)  # noqa: E731
    expected = net(imresize(lr, scale=scale))
    done = []
    with torch.no_grad():
        out = upscale_tiled(fn, lr, scale, tile, on_tile=lambda i, n: done.append((i, n)))
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=2e-6)
    n = math.ceil(h * scale / tile) * math.ceil(w * scale / tile)
    assert done == [(i, n) for i in range(1, n + 1)]
