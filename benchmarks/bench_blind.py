"""Blind-mode benchmark: kernel estimation on held-out images (issues 12 and 25).

Set5 + Set14 ground truth (never used to train the estimator; `--images
holdout`: the meta-trainer's held-out training images instead,
mzsr_fast.train.data.holdout_paths(DATA/train, 20)), cropped to a multiple of
the scale, degraded (docs/method.md section 3) and rounded to 8 bits with
- random kernels: `--kernels-per-image` draws per image of
  mzsr_fast.blind.random_kernel_params at `--scale` (x2: direct, variances
  0.2..5; x3, x4: the meta-training distribution; any angle);
- the presets the scale is estimated for (g_b_1.3, bicubic, at x2 only,
  estimated in that mode).
For every case and estimation method: the kernel L1 error (sum |k_est - k_true|
over the 21 x 21 grid), the error of assuming g_d_2.0, and the estimation time.
Then MZSR(10) PSNR (Y, shave = scale) with the default method's estimate, the
true kernel and the g_d_2.0 assumption, with the shipped default model for the
mode and scale, on the first random kernel of each image (`--mzsr-images`) and
on the presets of the first `--mzsr-preset-images` images (Set5). Finally the
estimation time of a 256 x 256 LR crop (or of the largest LR, when none is as large).

    PYTHONPATH=. python benchmarks/bench_blind.py -o benchmarks/results/blind.json [--scale 4] [--images holdout]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time

import torch

from mzsr_fast import metrics
from mzsr_fast.blind import DEFAULT_METHOD, METHODS, SCALES, estimate_kernel, kernel_l1, random_kernel_params
from mzsr_fast.degradation import PRESETS
from mzsr_fast.evaluation import degraded_lr, modcrop, super_resolve
from mzsr_fast.gaussian import gaussian_kernel
from mzsr_fast.io import read_image
from mzsr_fast.pretrained import default_model
from mzsr_fast.train.data import holdout_paths

ASSUMED = PRESETS["g_d_2.0"]


def image_paths(data: str, images: str) -> list[str]:
    """"test": Set5 then Set14; "holdout": the meta-trainer's 20 held-out training images."""
    if images == "holdout":
        return holdout_paths(os.path.join(data, "train"), 20)
    return sorted(glob.glob(os.path.join(data, "Set5", "*.png"))) + \
        sorted(glob.glob(os.path.join(data, "Set14", "*.png")))


def cases(paths: list[str], kernels_per_image: int, seed: int, scale: int = 2):
    """[(image, kind, theta, lambda1, lambda2, mode, gt, lr)] for every image and kernel."""
    generator = torch.Generator().manual_seed(seed)
    presets = [p for p in PRESETS.values() if p.mode in SCALES[scale]]
    out = []
    for path in paths:
        gt = modcrop(read_image(path, torch.float64), scale)
        draws = zip(*random_kernel_params(kernels_per_image, generator, scale))
        specs = [(f"random{i}", float(t), float(a), float(b), "direct") for i, (t, a, b) in enumerate(draws)]
        specs += [(p.name, p.theta, p.lambda1, p.lambda2, p.mode) for p in presets]
        for kind, theta, l1, l2, mode in specs:
            kernel = gaussian_kernel(torch.tensor(theta, dtype=torch.float64), l1, l2, 21)
            lr = degraded_lr(gt, kernel, scale, mode).float()
            out.append((os.path.basename(path), kind, theta, l1, l2, mode, gt, lr))
    return out


def psnr_mzsr(lr: torch.Tensor, gt: torch.Tensor, kernel: torch.Tensor, mode: str, scale: int = 2) -> float:
    sr = super_resolve(lr, kernel, scale, 10, model=default_model(mode, scale))
    return metrics.psnr(sr, gt, scale)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def summarise(rows: list[dict], timing: dict, methods: list[str], timing_size: str = "256 x 256") -> str:
    """Markdown tables: kernel L1 per group and method, MZSR(10) PSNR, timing."""
    groups = [("random (all)", lambda r: r["kind"].startswith("random"))]
    groups += [(name, lambda r, name=name: r["kind"] == name) for name in PRESETS
               if any(r["kind"] == name for r in rows)]
    lines = ["| kernels | cases | assume g_d_2.0 | " + " | ".join(methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    for label, keep in groups:
        sel = [r for r in rows if keep(r)]
        lines.append(f"| {label} | {len(sel)} | {_mean(r['assumed_l1'] for r in sel):.3f} | "
                     + " | ".join(f"{_mean(r[m]['l1'] for r in sel):.3f}" for m in methods) + " |")
    lines += ["", "Mean kernel L1 error (sum over the 21 x 21 grid). Estimation per image, mean wall / CPU "
              "seconds: " + ", ".join(f"{m} {_mean(r[m]['seconds'] for r in rows):.2f} / "
                                      f"{_mean(r[m]['cpu_seconds'] for r in rows):.2f}" for m in methods)
              + f"; {timing_size} LR (median of 5, wall / CPU): "
              + ", ".join(f"{m} {t[0]:.2f} / {t[1]:.2f}" for m, t in timing.items()), ""]
    lines += [f"| kernels | images | MZSR(10) estimated ({DEFAULT_METHOD}) | true kernel | assumed g_d_2.0 | "
              "estimated - true | estimated - assumed |", "|---|---|---|---|---|---|---|"]
    for label, keep in [("random", lambda r: r["kind"] == "random0")] + groups[1:]:
        sel = [r["psnr"] for r in rows if keep(r) and "psnr" in r]
        if sel:
            e, t, a = (_mean(p[k] for p in sel) for k in ("estimated", "true", "assumed_g_d_2.0"))
            lines.append(f"| {label} | {len(sel)} | {e:.2f} | {t:.2f} | {a:.2f} | {e - t:+.2f} | {e - a:+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    parser.add_argument("--scale", type=int, choices=tuple(SCALES), default=2)
    parser.add_argument("--images", choices=("test", "holdout"), default="test",
                        help="Set5 + Set14, or the meta-trainer's 20 held-out training images")
    parser.add_argument("--kernels-per-image", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mzsr-images", type=int, default=19,
                        help="images whose MZSR(10) PSNR is measured with their first random kernel")
    parser.add_argument("--mzsr-preset-images", type=int, default=5,
                        help="images whose MZSR(10) PSNR is measured with the presets (default: Set5)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", help="JSON file for every row")
    parser.add_argument("--markdown", help="write the summary tables here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")

    rows = []
    scale = args.scale
    all_cases = cases(image_paths(args.data, args.images), args.kernels_per_image, args.seed, scale)
    images = list(dict.fromkeys(c[0] for c in all_cases))
    for image, kind, theta, l1, l2, mode, gt, lr in all_cases:
        true = gaussian_kernel(torch.tensor(theta, dtype=torch.float64), l1, l2, 21)
        row = {"image": image, "kind": kind, "true": [theta, l1, l2], "mode": mode, "lr_shape": list(lr.shape[-2:]),
               "assumed_l1": kernel_l1(ASSUMED.kernel, true)}
        for method in methods:
            start, cpu = time.perf_counter(), time.process_time()
            est = estimate_kernel(lr, scale, mode=mode, method=method)
            row[method] = {"estimate": [est.theta, est.lambda1, est.lambda2], "confidence": est.confidence,
                           "l1": kernel_l1(est.kernel, true), "seconds": time.perf_counter() - start,
                           "cpu_seconds": time.process_time() - cpu}
        index = images.index(image)
        if kind == "random0" and index < args.mzsr_images or kind in PRESETS and index < args.mzsr_preset_images:
            est = estimate_kernel(lr, scale, mode=mode, method=DEFAULT_METHOD)
            row["psnr"] = {"estimated": psnr_mzsr(lr, gt, est.kernel, mode, scale),
                           "true": psnr_mzsr(lr, gt, true, mode, scale),
                           "assumed_g_d_2.0": psnr_mzsr(lr, gt, ASSUMED.kernel, mode, scale)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("true",)}), flush=True)

    # Estimation time of a 256 x 256 LR (a crop of the first LR image that large, else the largest), median of 5.
    lrs = [c[7] for c in all_cases]
    lr = next((x for x in lrs if min(x.shape[-2:]) >= 256), max(lrs, key=lambda x: x[0].numel()))[..., :256, :256]
    timing_size = f"{lr.shape[-2]} x {lr.shape[-1]}"
    timing = {}
    for method in methods:
        times = []
        for _ in range(5):
            start, cpu = time.perf_counter(), time.process_time()
            estimate_kernel(lr, scale, method=method)
            times.append((time.perf_counter() - start, time.process_time() - cpu))
        timing[method] = [statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)]
    print(json.dumps({"seconds_256": timing, "timing_size": timing_size}))
    summary = summarise(rows, timing, methods, timing_size)
    print(summary)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(summary)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"rows": rows, "seconds_256": timing, "timing_size": timing_size, "args": vars(args)}, f,
                      indent=1)


if __name__ == "__main__":
    main()
