"""Fit the "combined" kernel estimate of mzsr_fast.blind on synthetic training data,
then score every method on the held-out training images.

This script degrades random crops of the training images (every tenth image
left out, as in train_kernel_estimator.py) with kernels of the blind
benchmark's distribution at --scale (mzsr_fast.blind.random_kernel_params),
runs the learned and the cross-scale estimators, and fits by least squares
(mzsr_fast.blind.combine, in the network's units)

    p0 = c0 + c1 p0_learned + c2 p0_crossscale
    (p1, p2) = c3 (p1, p2)_crossscale + c4 (p1, p2)_learned

(no offset in the shape part, so the result turns with the image). Prints
the coefficients for blind.COMBINATION[scale]. Then, on the held-out images
(whole, never seen in training or in this fit; at x3 and x4 those with an LR
of at least VAL_MIN_LR pixels a side): one random kernel each
(--holdout-kernels N: N each) and the presets of the scale's modes, the mean
kernel L1 of assuming g_d_2.0, learned, cross-scale, and the combination with
the shipped and with the new coefficients. Set5 and Set14 are left to
benchmarks/bench_blind.py.

    python scripts/fit_kernel_combination.py ../shared/data/train --samples 300 --seed 4 [--scale 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from train_kernel_estimator import VAL_MIN_LR, benchmark_lr, load_images  # noqa: E402

from mzsr_fast.blind import (COMBINATION, SCALES, _crossscale, _learned, combine, gaussian_at_scale,  # noqa: E402
                             kernel_l1, random_kernel_params)
from mzsr_fast._kernelnet import params_from_gaussian  # noqa: E402
from mzsr_fast.degradation import PRESETS  # noqa: E402
from mzsr_fast.gaussian import gaussian_kernel  # noqa: E402


def _estimates(lr: torch.Tensor, mode: str, scale: int) -> torch.Tensor:
    """[1, 1, h, w] LR luma -> [6] (learned p, cross-scale p), in the network's units."""
    return torch.cat([_learned(lr.float(), mode)[0].double(), _crossscale(lr.float(), mode, scale)[0].double()])


def _kernel(p: torch.Tensor, scale: int) -> torch.Tensor:
    """The [21, 21] kernel of an estimate p [3] (network's units) at this scale."""
    theta, lambda1, lambda2 = gaussian_at_scale(p, scale)
    return gaussian_kernel(torch.tensor(theta, dtype=torch.float64), lambda1, lambda2, 21)


def fit(data: torch.Tensor) -> tuple[float, ...]:
    """[n, 9] (learned p, cross-scale p, true p) -> the five coefficients."""
    learned, cross, true = data[:, :3], data[:, 3:6], data[:, 6:]
    a = torch.stack([torch.ones(len(data), dtype=data.dtype), learned[:, 0], cross[:, 0]], 1)
    size = torch.linalg.lstsq(a, true[:, :1]).solution[:, 0]
    b = torch.stack([torch.cat([cross[:, 1], cross[:, 2]]), torch.cat([learned[:, 1], learned[:, 2]])], 1)
    shape = torch.linalg.lstsq(b, torch.cat([true[:, 1], true[:, 2]])[:, None]).solution[:, 0]
    return tuple(round(float(c), 4) for c in (*size, *shape))


def holdout_scores(images, coefficients: dict, seed: int, random_kernels: int = 1, scale: int = 2) -> dict:
    """Mean kernel L1 per kernel group ("random": random_kernels per image, and each preset of the scale's
    modes) and method."""
    g = torch.Generator().manual_seed(seed)
    draws = random_kernel_params(random_kernels * len(images), g, scale)
    theta, l1, l2 = (v.view(random_kernels, len(images)) for v in draws)  # [kernel j, image i]
    scores = {}
    for i, im in enumerate(images):
        hr = im[None].double()
        cases = [("random", float(theta[j, i]), float(l1[j, i]), float(l2[j, i]), "direct")
                 for j in range(random_kernels)]
        cases += [(p.name, p.theta, p.lambda1, p.lambda2, p.mode) for p in PRESETS.values() if p.mode in SCALES[scale]]
        for name, t, a, b, mode in cases:
            true = gaussian_kernel(torch.tensor(t, dtype=torch.float64), a, b, 21)
            e = _estimates(benchmark_lr(hr, t, a, b, mode, scale), mode, scale)
            errors = {"assume g_d_2.0": kernel_l1(PRESETS["g_d_2.0"].kernel, true),
                      "learned": kernel_l1(_kernel(e[:3], scale), true),
                      "crossscale": kernel_l1(_kernel(e[3:], scale), true)}
            for label, c in coefficients.items():
                errors[label] = kernel_l1(_kernel(combine(e[:3], e[3:], c), scale), true)
            for method, err in errors.items():
                scores.setdefault(name, {}).setdefault(method, []).append(err)
    return {name: {m: round(sum(v) / len(v), 4) for m, v in per.items()} for name, per in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--lr-size", type=int, default=160, help="LR crop size (smaller images: whole)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--scale", type=int, choices=tuple(SCALES), default=2)
    parser.add_argument("--holdout-kernels", type=int, default=1,
                        help="random kernels per held-out image (more: a less noisy comparison)")
    parser.add_argument("--save", help="also save the [samples, 9] (learned, cross-scale, true p) table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = args.scale
    images, holdout = load_images(args.data, VAL_MIN_LR, s)
    g = torch.Generator().manual_seed(args.seed)
    theta, l1, l2 = random_kernel_params(args.samples, g, s)
    rows = []
    for i in range(args.samples):
        im = images[int(torch.randint(0, len(images), (1,), generator=g))]
        hr_size = s * args.lr_size
        h, w = min(im.shape[-2], hr_size) // s * s, min(im.shape[-1], hr_size) // s * s
        top = int(torch.randint(0, im.shape[-2] - h + 1, (1,), generator=g))
        left = int(torch.randint(0, im.shape[-1] - w + 1, (1,), generator=g))
        lr = benchmark_lr(im[None, :, top:top + h, left:left + w].double(), theta[i], l1[i], l2[i], scale=s)
        true = params_from_gaussian(theta[i], l1[i] * 4 / s ** 2, l2[i] * 4 / s ** 2)  # in the network's units
        rows.append(torch.cat([_estimates(lr, "direct", s), true.double()]))
    data = torch.stack(rows)
    if args.save:
        torch.save(data, args.save)
    coefficients = fit(data)
    print(f"COMBINATION[{s}] =", coefficients, flush=True)
    scores = holdout_scores(holdout, {"combined (shipped)": COMBINATION[s], "combined (new)": coefficients}, args.seed,
                            args.holdout_kernels, s)
    print(json.dumps({"holdout_images": len(holdout), "mean_kernel_l1": scores}, indent=1))


if __name__ == "__main__":
    main()
