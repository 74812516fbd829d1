"""Paper-style evaluation: degrade (or read) LR inputs, super-resolve them with a
method, score PSNR/SSIM (SPEC section 9) and format the table."""
from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass

import torch

from . import metrics
from .adapt import adapt
from .degradation import degrade, load_kernel
from .io import IMAGE_EXTENSIONS, read_image
from .pretrained import mode_mismatch, resolve_model
from .resize import imresize
from .zssr import zssr

__all__ = ["Score", "evaluate", "format_markdown", "write_report", "modcrop", "METHODS"]

METHODS = ("mzsr", "bicubic", "zssr")


@dataclass
class Score:
    image: str
    method: str
    steps: int
    psnr: float
    ssim: float
    seconds: float


def modcrop(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop [..., H, W] to multiples of scale, keeping the top-left corner."""
    h, w = x.shape[-2:]
    return x[..., : h - h % scale, : w - w % scale]


def _quantise(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def _image_files(folder: str, name: str) -> list[str]:
    if not os.path.isdir(folder):
        raise ValueError(f"{name}: {folder!r} is not a folder")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}")
    return [os.path.join(folder, f) for f in files]


def _matching_lr(gt_path: str, lr_dir: str) -> str:
    """The LR file for a GT file: same stem, or the stem without _GT / _HR."""
    stem = os.path.splitext(os.path.basename(gt_path))[0]
    candidates = {stem, stem.removesuffix("_GT"), stem.removesuffix("_HR")}
    for path in _image_files(lr_dir, "--lr"):
        if os.path.splitext(os.path.basename(path))[0] in candidates:
            return path
    raise ValueError(f"--lr: no LR image for {os.path.basename(gt_path)} in {lr_dir!r}")


def evaluate(gt_dir: str, kernel, scale: int, steps: list[int], method: str = "mzsr",
             lr_dir: str | None = None, model=None, device=None, on_image=None, **adapt_options) -> list[Score]:
    """Score every GT image of gt_dir; one Score per (image, steps value).

    LR inputs are read from lr_dir, else made by degrading the GT (cropped to a
    multiple of scale) with the kernel and rounding to 8 bits. kernel: anything
    load_kernel accepts; a preset degrades with its own subsampling mode.
    model: as adapt's (None: the bundled model for the preset's mode and scale).
    steps: n of MZSR(n); for zssr the maximum training steps (ZSSR: 3000).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    kernel_tensor, kernel_mode = load_kernel(kernel)
    device = torch.device(device or "cpu")
    if method == "mzsr":  # once, not per image; None: the bundled model for the kernel's mode and scale
        model, info = resolve_model(model, kernel_mode, scale, device=device)
        mismatch = mode_mismatch(kernel_mode, info) if max(steps) > 0 else None
        if mismatch:
            warnings.warn(mismatch, UserWarning, stacklevel=2)
    scores = []
    for gt_path in _image_files(gt_dir, "--gt"):
        gt = modcrop(read_image(gt_path, torch.float64).to(device), scale)
        if lr_dir is not None:
            lr = read_image(_matching_lr(gt_path, lr_dir), torch.float64).to(device)
        else:
            lr = _quantise(degrade(gt, kernel_tensor.to(device), scale, mode=kernel_mode or "direct"))
        name = os.path.basename(gt_path)
        for n in ([0] if method == "bicubic" else steps):
            start = time.perf_counter()
            if method == "bicubic":
                sr = imresize(lr, scale=scale, size=gt.shape[-2:])
            elif method == "zssr":
                sr = zssr(lr.float(), kernel_tensor, scale, steps=n)
            else:
                sr = adapt(lr.float(), kernel_tensor, scale, steps=n, model=model, **adapt_options)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            sr = _quantise(sr.double())
            score = Score(name, method, n, metrics.psnr(sr, gt, scale), metrics.ssim(sr, gt, scale), seconds)
            scores.append(score)
            if on_image is not None:
                on_image(score)
    return scores


def _means(scores: list[Score]) -> list[Score]:
    out = []
    for method, steps in dict.fromkeys((s.method, s.steps) for s in scores):
        group = [s for s in scores if s.method == method and s.steps == steps]
        out.append(Score("mean", method, steps, *(sum(getattr(s, f) for s in group) / len(group)
                                                  for f in ("psnr", "ssim", "seconds"))))
    return out


def format_markdown(scores: list[Score], title: str = "") -> str:
    """Per-image rows and the mean: PSNR with two decimals, SSIM with four."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| image | method | steps | PSNR (dB) | SSIM | seconds |", "|---|---|---|---|---|---|"]
    for s in scores + _means(scores):
        label = f"**{s.image}**" if s.image == "mean" else s.image
        lines.append(f"| {label} | {s.method} | {s.steps} | {s.psnr:.2f} | {s.ssim:.4f} | {s.seconds:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, scores: list[Score], title: str) -> None:
    """results.md, results.csv and results.json in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(format_markdown(scores, title))
    rows = [asdict(s) for s in scores + _means(scores)]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"title": title, "scores": rows}, f, indent=2)
