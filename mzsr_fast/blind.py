"""Blind mode: estimate the blur kernel of an LR image from the image itself.

MZSR needs the LR image's kernel (docs/method.md section 8); for a real photo it is
unknown. estimate_kernel returns an anisotropic Gaussian (docs/method.md section 2:
theta, variances lambda1 >= lambda2) for x2 images made by blur + direct or
bicubic subsampling and for x3 and x4 images made by blur + direct
subsampling (docs/method.md section 3; the bicubic model is x2 only).

The estimators work in LR pixels. A Gaussian of variance v in HR pixels is,
on the LR grid of spacing s, one of variance v / s^2; the network was trained
on x2 images and answers in x2 HR pixels, 4 times the LR-pixel variance. So
every estimate is made in those units (the network's) and its variances are
multiplied by s^2 / 4 at the end (by 1 at x2). This holds as far as natural
images look alike at every scale, so that the image content under the blur,
and with it the aliasing, is the same in LR pixels whatever s; what differs
(the HR images' own softness, shrunk s^2 / 4 times more, and the larger
kernels of the x3 and x4 distributions) is left to a small per-scale fit,
COMBINATION. Three methods:

- "learned": a small CNN (mzsr_fast/_kernelnet.py, weights
  mzsr_fast/weights/kernel_estimator.safetensors, card beside them) trained
  on synthetic LR made from the training images with random kernels,
  variances 0.2..5 at any angle. It is run on the image and on its three
  other flips/transposes (whose kernels are the flipped/transposed kernel);
  the four answers are averaged, and how far they disagree sets the
  confidence. It judges the kernel's size, and its elongation and angle
  through the orientation slope of its features (_kernelnet.KernelNet).
- "crossscale": image-specific, no training. The kernel is fitted by
  gradient descent through anisotropic_blur_downsample so that the LR image
  degraded once more (the "son") has the same directional power spectrum
  shape as the LR image (cross-scale similarity of the image's statistics).
  For a power-law spectrum that match is reached at (1 - 1/s^2) times the
  true covariance, which is corrected for. It finds the angle and
  elongation well, the size less well (sharp kernels look blurrier).
- "combined" (the default): the size from the learned estimate, the shape
  from both, mostly the learned one, with the scale's least-squares weights
  COMBINATION of scripts/fit_kernel_combination.py.

benchmarks/bench_blind.py compares them (results in benchmarks/results/).
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace
from importlib import resources

import torch

from . import _checks
from ._kernelnet import KernelNet, gaussian_from_params, luma, params_from_gaussian
from .degradation import PRESETS
from .gaussian import gaussian_kernel
from .ops.blur_downsample import MODES, anisotropic_blur_downsample

__all__ = ["KernelEstimate", "estimate_kernel", "joint_estimate", "random_kernel_params", "kernel_l1",
           "gaussian_at_scale", "METHODS", "DEFAULT_METHOD", "MIN_SIZE", "KERNEL_SIZE", "SCALES"]

METHODS = ("learned", "crossscale", "combined")
DEFAULT_METHOD = "combined"
# Scales estimated, and the subsampling modes at each (the bicubic model, bicubic_x2, is x2 only).
SCALES = {2: ("direct", "bicubic"), 3: ("direct",), 4: ("direct",)}
KERNEL_SIZE = 21
# Smaller images hold too few edges for an estimate (the network's receptive field is about 30 pixels across).
MIN_SIZE = 32
# An image with fewer pixels than this whose luma gradient exceeds FLAT_GRADIENT is treated as flat.
FLAT_GRADIENT = 4 / 255
MIN_TEXTURED_PIXELS = 64
# The kernel assumed when an image gives no evidence: the presets the models were meta-trained around.
FALLBACK = {"direct": "g_d_2.0", "bicubic": "g_b_1.3"}
# The combined estimate per scale, p0 = c0 + c1 p0_learned + c2 p0_crossscale and (p1, p2) =
# c3 (p1, p2)_crossscale + c4 (p1, p2)_learned (in the network's units), fitted by
# scripts/fit_kernel_combination.py (300 samples, seed 4, --scale s) on synthetic training data: size
# from the network alone, shape mostly from it.
COMBINATION = {2: (-0.0417, 1.0102, 0.0073, 0.096, 0.9393), 3: (0.0057, 0.864, 0.0262, 0.0311, 0.7831),
               4: (-0.0684, 0.9451, 0.0029, -0.0083, 0.8722)}
# Scale of KernelEstimate.confidence: a view disagreement of 0.05 in kernel L1 gives 0.5.
CONFIDENCE_SCALE = 0.05
# An image larger than ESTIMATE_SIDE x ESTIMATE_SIDE pixels is estimated on its
# ESTIMATE_WINDOWS most textured windows of that size (_textured_windows), whose
# estimates are joined as joint_estimate joins frames (its confidence; the spread
# is the windows' mean): the blur is the same everywhere in the image, while the
# estimators' time and memory grow with it.
ESTIMATE_SIDE = 256
ESTIMATE_WINDOWS = 4


@dataclass(frozen=True)
class KernelEstimate:
    """An estimated Gaussian blur kernel (docs/method.md section 2 conventions).

    theta: radians in [0, pi); lambda1 >= lambda2: variances in HR pixels of
    the scale; mode: the subsampling it was estimated for; spread: for
    "learned" and "combined" the mean kernel L1 between the network's four
    views and their mean (in the network's units at every scale), for
    "crossscale" the final residual of the spectral fit (NaN for a
    fallback); confidence = 1 / (1 + spread / CONFIDENCE_SCALE) in (0, 1], a
    monotone score, not a calibrated probability (0 for a fallback);
    fallback: None, or why the fallback preset was returned instead.
    """

    theta: float
    lambda1: float
    lambda2: float
    mode: str
    method: str
    confidence: float
    spread: float
    fallback: str | None = None

    @property
    def kernel(self) -> torch.Tensor:
        """[21, 21] float64 kernel, normalised to sum 1."""
        return gaussian_kernel(torch.tensor(self.theta, dtype=torch.float64), self.lambda1, self.lambda2,
                               KERNEL_SIZE)

    @property
    def spec(self) -> str:
        """"theta,lambda1,lambda2", as --kernel and load_kernel accept it."""
        return f"{self.theta:.6g},{self.lambda1:.6g},{self.lambda2:.6g}"

    def as_dict(self) -> dict:
        """The fields as JSON values (a fallback's NaN spread as None: JSON has no NaN)."""
        return {"theta": self.theta, "lambda1": self.lambda1, "lambda2": self.lambda2, "mode": self.mode,
                "method": self.method, "confidence": self.confidence,
                "spread": self.spread if math.isfinite(self.spread) else None, "fallback": self.fallback}

    def __str__(self) -> str:
        text = (f"theta={self.theta:.3f} lambda1={self.lambda1:.3f} lambda2={self.lambda2:.3f} "
                f"({self.mode}, {self.method}, confidence {self.confidence:.2f})")
        return text + (f" [fallback: {self.fallback}]" if self.fallback else "")


@functools.lru_cache(maxsize=1)
def _network() -> KernelNet:
    from safetensors.torch import load_file

    path = resources.files("mzsr_fast") / "weights" / "kernel_estimator.safetensors"
    net = KernelNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


# The four views: (transpose, flip columns). Their kernels relate to the
# image's by the same transform: in the matrix-log parameters p (S = [[a, b],
# [b, d]]) a transpose swaps a and d (p1 -> -p1) and a flip negates b (p2 -> -p2).
_VIEWS = ((False, False), (True, False), (False, True), (True, True))


def _view(x: torch.Tensor, transpose: bool, flip: bool) -> torch.Tensor:
    x = x.transpose(-2, -1) if transpose else x
    return x.flip(-1) if flip else x


def _unview(p: torch.Tensor, transpose: bool, flip: bool) -> torch.Tensor:
    """The image's p from a view's p [3] (both transforms are their own inverses)."""
    return p * torch.tensor([1.0, -1.0 if transpose else 1.0, -1.0 if flip else 1.0], dtype=p.dtype)


def _kernel_of(p: torch.Tensor) -> torch.Tensor:
    return gaussian_kernel(*gaussian_from_params(p.double()), KERNEL_SIZE)


def _learned(g: torch.Tensor, mode: str) -> tuple[torch.Tensor, float]:
    """g [1, 1, H, W] luma -> (p [3], spread)."""
    net = _network()
    bicubic = torch.tensor([mode == "bicubic"])
    with torch.no_grad():
        views = torch.cat([_unview(net(_view(g, t, f), bicubic)[0], t, f)[None] for t, f in _VIEWS])
    p = views.mean(0)
    spread = float((torch.stack([_kernel_of(v) for v in views]) - _kernel_of(p)).abs().sum((-2, -1)).mean())
    return p, spread


def _spectral_bins(h: int, w: int, radial: int = 6, angular: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin membership of the rfft2 coefficients of an h x w image: ([bins, h * (w // 2 + 1)]
    row-normalised averaging matrix, [bins] mask of non-empty bins). Radii are log-spaced in
    0.04..0.45 cycles per pixel, angles cover [0, pi) (the spectrum of a real image is
    point symmetric)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None].expand(h, w // 2 + 1)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :].expand(h, w // 2 + 1)
    radius = torch.sqrt(fx ** 2 + fy ** 2)
    angle = torch.remainder(torch.atan2(fy, fx), math.pi)
    edges = torch.logspace(math.log10(0.04), math.log10(0.45), radial + 1, dtype=torch.float64)
    r_bin = torch.bucketize(radius, edges) - 1
    a_bin = (angle / math.pi * angular).long().clamp(max=angular - 1)
    inside = (r_bin >= 0) & (r_bin < radial)
    index = torch.where(inside, r_bin * angular + a_bin, radial * angular).flatten()
    one_hot = torch.nn.functional.one_hot(index, radial * angular + 1)[:, :-1].T.double()
    counts = one_hot.sum(1, keepdim=True)
    return one_hot / counts.clamp(min=1), counts[:, 0] > 0


def _log_spectrum(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """[1, 1, h, w] -> [bins] log mean power per bin (Hann-windowed periodogram)."""
    h, w = x.shape[-2:]
    window = torch.outer(torch.hann_window(h, periodic=False, dtype=x.dtype),
                         torch.hann_window(w, periodic=False, dtype=x.dtype))
    y = (x[0, 0] - x.mean()) * window
    power = torch.fft.rfft2(y).abs() ** 2 / window.pow(2).sum()
    return torch.log(bins @ power.flatten() + 1e-12)


def _crossscale(g: torch.Tensor, mode: str, scale: int, steps: int = 60) -> tuple[torch.Tensor, float]:
    """g [1, 1, H, W] luma -> (p [3] in the network's units, final residual): fit the son's spectrum shape
    to the image's."""
    g = g.double()
    h, w = g.shape[-2:]
    bins_lr, used_lr = _spectral_bins(h, w)
    son_shape = (math.ceil(h / scale), math.ceil(w / scale))
    bins_son, used_son = _spectral_bins(*son_shape)
    used = used_lr & used_son
    target = _log_spectrum(g, bins_lr)[used]
    # Start slightly anisotropic: at lambda1 == lambda2 the gradient in theta vanishes.
    p = params_from_gaussian(torch.tensor(0.0), torch.tensor(1.6), torch.tensor(1.4)).double().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.08)
    residual = torch.zeros(())
    for _ in range(steps):
        theta, lambda1, lambda2 = gaussian_from_params(p)
        son = anisotropic_blur_downsample(g, theta, lambda1, lambda2, KERNEL_SIZE, scale, mode)
        d = _log_spectrum(son, bins_son)[used] - target
        residual = ((d - d.mean()) ** 2).mean()  # shape only: the overall level is free
        opt.zero_grad()
        residual.backward()
        opt.step()
    # The match is reached at (1 - 1/s^2) of the true covariance: divide it out (p0 is log det / 2), and
    # go to the network's units.
    p = p.detach().clone()
    p[0] -= math.log(1 - 1 / scale ** 2) + math.log(scale ** 2 / 4)
    return p, float(residual.detach())


def gaussian_at_scale(p: torch.Tensor, scale: int) -> tuple[float, float, float]:
    """An estimate p [3] in the network's units (variances in HR pixels of an x2 image) -> (theta,
    lambda1, lambda2) in HR pixels at this scale: the variances times scale^2 / 4. The network's
    variance range LAMBDA_RANGE scales with them."""
    theta, lambda1, lambda2 = (float(v) for v in gaussian_from_params(p.double()))
    return theta, lambda1 * scale ** 2 / 4, lambda2 * scale ** 2 / 4


def combine(p_learned: torch.Tensor, p_cross: torch.Tensor, c=COMBINATION[2]) -> torch.Tensor:
    """The "combined" estimate from the two methods' p [..., 3]: p0 = c0 + c1 p0_learned + c2 p0_crossscale,
    (p1, p2) = c3 (p1, p2)_crossscale + c4 (p1, p2)_learned. Returns [..., 3] float64."""
    p_learned, p_cross = p_learned.double(), p_cross.double()
    return torch.cat([c[0] + c[1] * p_learned[..., :1] + c[2] * p_cross[..., :1],
                      c[3] * p_cross[..., 1:] + c[4] * p_learned[..., 1:]], -1)


def random_kernel_params(n: int, generator: torch.Generator | None = None, scale: int = 2):
    """n kernels of the blind benchmark (and `eval --kernel random`) at this
    scale: theta ~ U[0, pi); at x2 lambda1 ~ U[0.2, 5], lambda2 ~ U[0.2,
    lambda1] (sharp kernels down to the g_d_0.2 preset and blurrier ones than
    the meta-training distribution), at x3 and x4 the meta-training
    distribution (docs/method.md section 2) lambda1 ~ U[1, 2.5 scale], lambda2
    ~ U[1, lambda1]. Returns (theta, lambda1, lambda2), each [n] float64."""
    low, high = (0.2, 5.0) if scale == 2 else (1.0, 2.5 * scale)
    u = torch.rand(3, n, generator=generator, dtype=torch.float64)
    lambda1 = low + (high - low) * u[1]
    return math.pi * u[0], lambda1, low + (lambda1 - low) * u[2]


def kernel_l1(estimate: torch.Tensor, true: torch.Tensor) -> float:
    """sum |k_est - k_true| of two [k, k] kernels (the smaller zero-padded, centred, to the larger)."""
    pad = (estimate.shape[-1] - true.shape[-1]) // 2
    if pad > 0:
        true = torch.nn.functional.pad(true, (pad,) * 4)
    elif pad < 0:
        estimate = torch.nn.functional.pad(estimate, (-pad,) * 4)
    return float((estimate.double() - true.double()).abs().sum())


def _check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return mode


def _images(lr) -> tuple[list[torch.Tensor], bool]:
    """lr -> ([C, H, W] images, whether a list is returned)."""
    if isinstance(lr, (list, tuple)):
        if not lr:
            raise ValueError("lr: expected at least one image, got an empty list")
        images = []
        for i, x in enumerate(lr):
            x4, _ = _checks.as_batched_image(x, f"lr[{i}]")
            if x4.shape[0] != 1:
                raise ValueError(f"lr[{i}]: expected one image [C, H, W], got shape {tuple(x.shape)}")
            images.append(x4[0])
        return images, True
    x4, was_3d = _checks.as_batched_image(lr, "lr")
    return list(x4), not was_3d


def _fallback(mode: str, method: str, reason: str) -> KernelEstimate:
    p = PRESETS[FALLBACK[mode]]
    warnings.warn(f"lr: {reason}; falling back to the {p.name} kernel", UserWarning, stacklevel=4)
    return KernelEstimate(p.theta, p.lambda1, p.lambda2, mode, method, 0.0, float("nan"), f"{reason} ({p.name})")


def _estimate_one(x: torch.Tensor, name: str, scale: int, mode: str, method: str) -> KernelEstimate:
    if x.shape[0] not in (1, 3):
        raise ValueError(f"{name}: expected 1 (gray) or 3 (RGB) channels, got {x.shape[0]}")
    _checks.finite_tensor(x, name)
    if float(x.min()) < -0.01 or float(x.max()) > 1.01:
        raise ValueError(f"{name}: expected values in [0, 1], got {float(x.min()):.3g}..{float(x.max()):.3g} "
                         f"(8-bit values must be divided by 255)")
    h, w = x.shape[-2:]
    if min(h, w) < MIN_SIZE:
        return _fallback(mode, method, f"image of {h}x{w} is too small to estimate a kernel "
                                       f"(at least {MIN_SIZE}x{MIN_SIZE} needed)")
    g = luma(x[None].detach().cpu().float())
    gradient = torch.maximum((g[..., 1:, :-1] - g[..., :-1, :-1]).abs(), (g[..., :-1, 1:] - g[..., :-1, :-1]).abs())
    if int((gradient > FLAT_GRADIENT).sum()) < MIN_TEXTURED_PIXELS:
        return _fallback(mode, method, "image is flat (almost no edges or texture) and shows no blur")
    windows = _textured_windows(g, gradient)
    if len(windows) == 1:
        return _estimate_luma(windows[0], scale, mode, method)
    estimates = [_estimate_luma(window, scale, mode, method) for window in windows]
    spread = sum(e.spread for e in estimates) / len(estimates)
    return replace(joint_estimate(estimates), method=method, spread=spread)


def _starts(length: int, size: int) -> list[int]:
    """ceil(length / size) window starts, evenly spaced from 0 to length - size."""
    count = -(-length // size)
    return [0] if count == 1 else [round(i * (length - size) / (count - 1)) for i in range(count)]


def _textured_windows(g: torch.Tensor, gradient: torch.Tensor) -> list[torch.Tensor]:
    """g [1, 1, H, W] luma, gradient [1, 1, H - 1, W - 1] its magnitude -> [g] when
    it holds at most ESTIMATE_SIDE^2 pixels, else its ESTIMATE_WINDOWS most
    textured (highest mean gradient) windows of that many pixels: ESTIMATE_SIDE
    square, or, in a strip, the strip's whole width (height) and as long as the
    pixel count allows. The windows are placed on a grid that covers the image
    (evenly spaced, overlapping where the sides do not divide) and one with
    fewer than MIN_TEXTURED_PIXELS edge pixels is taken only if none has more."""
    h, w = g.shape[-2:]
    if h * w <= ESTIMATE_SIDE ** 2:
        return [g]
    wh = min(h, ESTIMATE_SIDE)
    ww = min(w, ESTIMATE_SIDE ** 2 // wh)
    wh = min(h, ESTIMATE_SIDE ** 2 // ww)
    cells = [(top, left) for top in _starts(h, wh) for left in _starts(w, ww)]
    crops = [gradient[..., top:top + wh, left:left + ww] for top, left in cells]
    texture = torch.tensor([float(c.mean()) for c in crops])
    edges = [int((c > FLAT_GRADIENT).sum()) for c in crops]
    ranked = texture.argsort(descending=True).tolist()
    chosen = [i for i in ranked if edges[i] >= MIN_TEXTURED_PIXELS][:ESTIMATE_WINDOWS] or ranked[:1]
    return [g[..., cells[i][0]:cells[i][0] + wh, cells[i][1]:cells[i][1] + ww] for i in sorted(chosen)]


def _estimate_luma(g: torch.Tensor, scale: int, mode: str, method: str) -> KernelEstimate:
    """The estimate of one checked luma image g [1, 1, H, W]."""
    if method == "learned":
        p, spread = _learned(g, mode)
    elif method == "crossscale":
        p, spread = _crossscale(g, mode, scale)
    else:
        p_learned, spread = _learned(g, mode)
        p = combine(p_learned, _crossscale(g, mode, scale)[0], COMBINATION[scale])
    theta, lambda1, lambda2 = gaussian_at_scale(p, scale)
    return KernelEstimate(theta, lambda1, lambda2, mode, method, 1 / (1 + spread / CONFIDENCE_SCALE), spread)


def estimate_kernel(lr, scale: int = 2, mode: str = "direct", method: str = DEFAULT_METHOD):
    """Estimate the Gaussian blur kernel of x2, x3 or x4 LR images from the images alone.

    lr: an image [C, H, W] (C = 3 RGB or 1 gray, values in [0, 1]), a batch
    [B, C, H, W] or a list of images of any sizes. scale: 2, 3 or 4 (SCALES).
    mode: "direct" or "bicubic" subsampling, as the image was made (g_b_*
    presets: "bicubic"; x2 only). method: "combined" (default), "learned" or
    "crossscale" (see the module docstring). Variances are in HR pixels.

    Returns a KernelEstimate for one [C, H, W] image, else a list of them.
    Images smaller than MIN_SIZE on a side, or flat ones, give the mode's
    fallback preset (g_d_2.0 / g_b_1.3) with confidence 0 and a warning
    naming it. Raises ValueError for NaN/infinite values, values outside
    [0, 1], wrong shapes or channel counts.
    """
    scale = _checks.integer_scale(scale)
    if scale not in SCALES:
        raise ValueError(f"scale: the kernel estimators are for x2, x3 and x4 images, got {scale}")
    mode = _check_mode(mode)
    if mode not in SCALES[scale]:
        raise ValueError(f"mode: {mode!r} is estimated at x2 only (the bicubic model is x2), got scale {scale}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    images, as_list = _images(lr)
    names = [f"lr[{i}]" if as_list else "lr" for i in range(len(images))]
    estimates = []
    for x, name in zip(images, names):  # a loop, not a comprehension: the warnings' stacklevel counts frames
        estimates.append(_estimate_one(x, name, scale, mode, method))
    return estimates if as_list else estimates[0]


def joint_estimate(estimates: list[KernelEstimate]) -> KernelEstimate:
    """One kernel for images that share their blur (frames of one video, a
    burst): the Gaussian whose covariance is the confidence-weighted mean of
    the estimates' covariances R diag(lambda1, lambda2) R^T. Fallback
    estimates (confidence 0) count only when every estimate is one."""
    weights = torch.tensor([e.confidence for e in estimates], dtype=torch.float64)
    if float(weights.sum()) <= 0:
        weights = torch.ones_like(weights)
    covariance = torch.zeros(2, 2, dtype=torch.float64)
    for e, w in zip(estimates, weights):
        c, s = math.cos(e.theta), math.sin(e.theta)
        rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        covariance += w * rotation @ torch.diag(torch.tensor([e.lambda1, e.lambda2], dtype=torch.float64)) @ rotation.T
    covariance /= weights.sum()
    variances, vectors = torch.linalg.eigh(covariance)  # ascending
    theta = math.atan2(float(vectors[1, 1]), float(vectors[0, 1])) % math.pi
    first = estimates[0]
    return KernelEstimate(theta, float(variances[1]), float(variances[0]), first.mode, f"joint {first.method}",
                          float((weights * torch.tensor([e.confidence for e in estimates])).sum() / weights.sum()),
                          float("nan"), first.fallback if all(e.fallback for e in estimates) else None)
