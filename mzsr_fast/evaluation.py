"""Paper-style evaluation: degrade (or read) LR inputs, super-resolve them with a
method, score PSNR/SSIM (docs/method.md section 9) and format the table."""
from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from io import StringIO

import torch

from . import metrics
from ._files import atomic_write
from .adapt import UnadaptedModelWarning, adapt
from .degradation import degrade, load_kernel
from .io import IMAGE_EXTENSIONS, check_image, read_image
from .pretrained import mode_mismatch, resolve_model
from .resize import imresize
from .zssr import zssr

__all__ = ["Score", "evaluate", "format_markdown", "write_report", "modcrop", "METHODS"]

METHODS = ("mzsr", "bicubic", "zssr")


@dataclass
class Score:
    """One result. kernel: the kernel the LR was made with ("theta,lambda1,lambda2" for
    `kernel="random"`), or for method "mzsr-est" the estimated one; kernel_l1: the
    estimate's sum |k_est - k_true| over the kernel grid (None without an estimate);
    model: the network MZSR(steps) adapted ("" for the other methods)."""

    image: str
    method: str
    steps: int
    psnr: float
    ssim: float
    seconds: float
    kernel: str = ""
    kernel_l1: float | None = None
    model: str = ""


def modcrop(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop [..., H, W] to multiples of scale, keeping the top-left corner."""
    h, w = x.shape[-2:]
    return x[..., : h - h % scale, : w - w % scale]


def quantise(x: torch.Tensor) -> torch.Tensor:
    """x clipped to [0, 1] and rounded to 8-bit levels, as a saved image would be."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def degraded_lr(gt: torch.Tensor, kernel: torch.Tensor, scale: int, mode: str | None = None) -> torch.Tensor:
    """The LR test input made from a GT image [(B,) C, H, W] (cropped to a
    multiple of scale): degraded in float64 with kernel [k, k] and mode (None:
    direct; docs/method.md section 3), rounded to 8 bits. Returns float64."""
    return quantise(degrade(gt.double(), kernel.to(gt.device), scale, mode=mode or "direct"))


def super_resolve(lr: torch.Tensor, kernel, scale: int, steps: int, method: str = "mzsr", model=None,
                  on_step=None, size=None, adapt_pixels: int = 0, **adapt_options) -> torch.Tensor:
    """SR [C, sH, sW] of an LR image [C, H, W] by method ("mzsr": MZSR(steps)
    through adapt, on the whole image unless adapt_pixels gives a budget, as
    the paper adapts; "zssr": ZSSR with at most steps steps; "bicubic": resized
    to size, default s times the LR's), rounded to 8 bits as the protocol
    scores it (docs/method.md section 8). Float64."""
    if method == "bicubic":
        sr = imresize(lr, scale=scale, size=size)
    elif method == "zssr":
        sr = zssr(lr.float(), kernel, scale, steps=steps)
    else:
        with warnings.catch_warnings():  # MZSR(0) is scored on purpose: it is a column of the paper's tables
            warnings.simplefilter("ignore", UnadaptedModelWarning)
            sr = adapt(lr.float(), kernel, scale, steps=steps, model=model, on_step=on_step,
                       adapt_pixels=adapt_pixels, **adapt_options)
    return quantise(sr.double())


def _image_files(folder: str, name: str) -> list[str]:
    if not os.path.isdir(folder):
        raise ValueError(f"{name}: {folder!r} is not a folder")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}")
    return [os.path.join(folder, f) for f in files]


def _matching_lr(gt_path: str, lr_files: list[str], lr_dir: str, scale: int) -> str:
    """The LR file for a GT file: the same stem, or the stem without _GT / _HR,
    each also with the _x{scale} that `mzsr-fast degrade` appends."""
    stem = os.path.splitext(os.path.basename(gt_path))[0]
    names = {stem, stem.removesuffix("_GT"), stem.removesuffix("_HR")}
    names |= {f"{name}_x{scale}" for name in names}
    found = [path for path in lr_files if os.path.splitext(os.path.basename(path))[0] in names]
    if not found:
        raise ValueError(f"--lr: no LR image for {os.path.basename(gt_path)} in {lr_dir!r} "
                         f"(expected one named {' or '.join(sorted(names))} with an image extension)")
    if len(found) > 1:
        raise ValueError(f"--lr: several LR images for {os.path.basename(gt_path)} in {lr_dir!r}: "
                         f"{', '.join(os.path.basename(p) for p in found)}")
    return found[0]


def _check_lr_size(lr_path: str, lr_size: tuple[int, int], gt_size: tuple[int, int], scale: int) -> None:
    """ValueError naming the LR file unless each side is the GT's divided by
    scale (rounded down: the GT cropped to a multiple of scale; or up: degraded
    whole, as `mzsr-fast degrade` does)."""
    if all(side in (g // scale, -(-g // scale)) for side, g in zip(lr_size, gt_size)):
        return
    expected = f"{gt_size[0] // scale}x{gt_size[1] // scale}"
    raise ValueError(f"{lr_path}: --lr image of {lr_size[0]}x{lr_size[1]} (height x width) does not fit its GT of "
                     f"{gt_size[0]}x{gt_size[1]} at x{scale}; expected {expected}")


def _lr_kernels(gt_paths: list[str], kernel, seed: int | None, lr_dir: str | None, scale: int):
    """[(kernel [k, k] float64, kernel mode, label)] per GT image: one shared
    kernel, or for kernel="random" each image's own draw of the blind benchmark's
    distribution at this scale (mzsr_fast.blind.random_kernel_params) from `seed`."""
    if kernel != "random":
        if seed is not None:
            raise ValueError("seed: only used with kernel 'random'")
        k, mode = load_kernel(kernel)
        return [(k, mode, kernel if isinstance(kernel, str) else "")] * len(gt_paths)
    if lr_dir is not None:
        raise ValueError("kernel: 'random' degrades the GT images itself; it cannot be combined with an LR folder")
    from .blind import random_kernel_params
    from .gaussian import gaussian_kernel

    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    out = []
    for theta, l1, l2 in zip(*random_kernel_params(len(gt_paths), generator, scale)):
        label = f"{float(theta):.4f},{float(l1):.4f},{float(l2):.4f}"
        out.append((gaussian_kernel(theta, l1, l2, 21), None, label))
    return out


def evaluate(gt_dir: str, kernel, scale: int, steps: list[int], method: str = "mzsr",
             lr_dir: str | None = None, model=None, device=None, on_image=None, on_step=None,
             seed: int | None = None, estimate_kernel: bool = False, on_bad_input=None,
             **adapt_options) -> list[Score]:
    """Score every GT image of gt_dir; one Score per (image, steps value).

    LR inputs are read from lr_dir, else made by degrading the GT (cropped to a
    multiple of scale) with the kernel and rounding to 8 bits. kernel: anything
    load_kernel accepts (a preset degrades with its own subsampling mode), or
    "random": each image gets its own kernel drawn from the blind benchmark's
    distribution at the scale with `seed` (default 0), recorded in Score.kernel.
    model: as adapt's (None: the bundled model for the preset's mode and scale).
    adapt_options: adapt's (adapt_pixels: default 0, the whole image, as the paper adapts).
    steps: n of MZSR(n); for zssr the maximum training steps (ZSSR: 3000).
    estimate_kernel (mzsr only): also adapt with the kernel estimated from each
    LR image (mzsr_fast.blind, the model's subsampling mode) and report those
    results as method "mzsr-est", with the estimate and its kernel L1 error.
    on_image(score) is called after each Score, on_step(image, n, done, total)
    after each adaptation step of MZSR(n) (progress within an image). Every
    file is found and opened before any work; errors name the image.
    on_bad_input(error): called, instead of raising, for each image file that
    cannot be read (its header, checked before any work, or its data, when
    read) and each LR file whose size does not fit its GT (each side the GT's
    divided by the scale, rounded down or up); that GT image is then left out
    and the others are scored.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if estimate_kernel and method != "mzsr":
        raise ValueError(f"estimate_kernel: only for method 'mzsr', got {method!r}")
    gt_files = _image_files(gt_dir, "--gt")
    kernels = _lr_kernels(gt_files, kernel, seed, lr_dir, scale)
    kernel_mode = kernels[0][1]
    device = torch.device(device or "cpu")
    estimate_mode = None
    models = {n: model for n in steps}
    if method == "mzsr":  # once, not per image; None: the bundled model for the kernel's mode, scale and steps
        models = {n: resolve_model(model, kernel_mode, scale, device=device, steps=n)[0] for n in steps}
        info = models[max(steps)].model_info
        mismatch = mode_mismatch(kernel_mode, info, scale, max(steps)) if max(steps) > 0 else None
        if mismatch:
            warnings.warn(mismatch, UserWarning, stacklevel=2)
        estimate_mode = info.mode if estimate_kernel else None
    # Every input is found and its header read before any work: a bad file stops the
    # run at once, or without on_bad_input is reported there and left out.
    lr_files = _image_files(lr_dir, "--lr") if lr_dir is not None else []
    pairs = [(gt_path, _matching_lr(gt_path, lr_files, lr_dir, scale) if lr_dir is not None else None)
             for gt_path in gt_files]
    unreadable = set()
    for gt_path, lr_path in pairs:
        try:
            gt_size = check_image(gt_path)
            if lr_path is not None:
                _check_lr_size(lr_path, check_image(lr_path), gt_size, scale)
        except (ValueError, OSError) as error:
            if on_bad_input is None:
                raise
            on_bad_input(error)
            unreadable.add(gt_path)
    scores = []
    for (gt_path, lr_path), image_kernel in zip(pairs, kernels):
        if gt_path in unreadable:
            continue
        try:
            scores += _score_image(gt_path, lr_path, image_kernel, scale, steps, method, models, device, on_image,
                                   on_step, estimate_mode, adapt_options)
        except ValueError as error:
            if not str(error).startswith((gt_path, str(lr_path))):
                raise ValueError(f"{gt_path}: {error}") from None
            if on_bad_input is None:  # read_image's errors name the file already
                raise
            on_bad_input(error)
    return scores


def _score_image(gt_path, lr_path, image_kernel, scale, steps, method, models, device, on_image, on_step,
                 estimate_mode, adapt_options) -> list[Score]:
    """evaluate's Scores of one GT image (and its LR file, or None: degrade the
    GT with image_kernel, a (kernel, mode, label) of _lr_kernels). With
    estimate_mode, also the runs with the kernel estimated in that mode. Each
    row's seconds is what the user waits for it: the first includes reading
    (and degrading) the image, every one its scoring."""
    kernel_tensor, kernel_mode, label = image_kernel
    start = time.perf_counter()
    gt = modcrop(read_image(gt_path, torch.float64).to(device), scale)
    if lr_path is not None:
        lr = read_image(lr_path, torch.float64).to(device)
    else:
        lr = degraded_lr(gt, kernel_tensor, scale, kernel_mode)
    name = os.path.basename(gt_path)
    runs = [(method, kernel_tensor, label, None)]
    if estimate_mode is not None:
        from .blind import estimate_kernel as estimate, kernel_l1

        est = estimate(lr.float(), scale, mode=estimate_mode)
        runs.append(("mzsr-est", est.kernel, est.spec, kernel_l1(est.kernel, kernel_tensor)))
    scores = []
    for n in ([0] if method == "bicubic" else steps):
        for run_method, run_kernel, run_label, run_l1 in runs:
            step_hook = (lambda done, total, n=n: on_step(name, n, done, total)) if on_step else None
            sr = super_resolve(lr, run_kernel, scale, n, method, models.get(n), step_hook, size=gt.shape[-2:],
                               **adapt_options)
            psnr, ssim = metrics.psnr_ssim(sr, gt, scale)
            now = time.perf_counter()
            model = models[n].model_info.name if method == "mzsr" else ""
            score = Score(name, run_method, n, psnr, ssim, now - start, run_label, run_l1, model)
            start = now
            scores.append(score)
            if on_image is not None:
                on_image(score)
    return scores


def _means(scores: list[Score]) -> list[Score]:
    out = []
    for method, steps in dict.fromkeys((s.method, s.steps) for s in scores):
        group = [s for s in scores if s.method == method and s.steps == steps]
        errors = [s.kernel_l1 for s in group if s.kernel_l1 is not None]
        out.append(Score("mean", method, steps, *(sum(getattr(s, f) for s in group) / len(group)
                                                  for f in ("psnr", "ssim", "seconds")),
                         kernel_l1=sum(errors) / len(errors) if errors else None, model=group[0].model))
    return out


def format_markdown(scores: list[Score], title: str = "") -> str:
    """Per-image rows and the mean: PSNR with two decimals, SSIM with four; the
    model, kernel and kernel L1 columns when the scores carry them."""
    models = any(s.model for s in scores)
    kernels = any(s.kernel for s in scores)
    errors = any(s.kernel_l1 is not None for s in scores)
    header = ["image", "method"] + (["model"] if models else []) + ["steps", "PSNR (dB)", "SSIM", "seconds"]
    header += ["kernel (theta,l1,l2)"] if kernels else []
    header += ["kernel L1"] if errors else []
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in scores + _means(scores):
        label = f"**{s.image}**" if s.image == "mean" else s.image
        row = [label, s.method] + ([s.model] if models else []) + [str(s.steps), f"{s.psnr:.2f}", f"{s.ssim:.4f}",
                                                                   f"{s.seconds:.2f}"]
        row += [s.kernel] if kernels else []
        row += ["" if s.kernel_l1 is None else f"{s.kernel_l1:.3f}"] if errors else []
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, scores: list[Score], title: str) -> None:
    """results.md, results.csv and results.json in out_dir, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "results.md"), format_markdown(scores, title).encode())
    rows = [asdict(s) for s in scores + _means(scores)]
    table = StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out_dir, "results.csv"), table.getvalue().encode())
    atomic_write(os.path.join(out_dir, "results.json"), json.dumps({"title": title, "scores": rows}, indent=2).encode())
