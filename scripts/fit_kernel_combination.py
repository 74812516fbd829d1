"""Fit the "combined" kernel estimate of mzsr_fast.blind on synthetic training data.

The learned CNN judges the kernel's size (p0 of the matrix-log parameters)
well, the cross-scale spectral fit its shape and angle (p1, p2). This script
degrades random crops of the training images (every tenth image left out,
as in train_kernel_estimator.py) with kernels of the blind benchmark's
distribution, runs both estimators, and fits by least squares

    p0 = c0 + c1 p0_learned + c2 p0_crossscale
    (p1, p2) = c3 (p1, p2)_crossscale + c4 (p1, p2)_learned

(no offset in the shape part, so the result turns with the image). Prints
the coefficients for blind.COMBINATION.

    python scripts/fit_kernel_combination.py ../shared/data/train --samples 300 --seed 4
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from train_kernel_estimator import load_images  # noqa: E402

from mzsr_fast.blind import _crossscale, _learned, random_kernel_params  # noqa: E402
from mzsr_fast._kernelnet import params_from_gaussian  # noqa: E402
from mzsr_fast.degradation import degrade  # noqa: E402
from mzsr_fast.gaussian import gaussian_kernel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--lr-size", type=int, default=160, help="LR crop size (smaller images: whole)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--save", help="also save the [samples, 9] (learned, cross-scale, true p) table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, _ = load_images(args.data, 48)
    g = torch.Generator().manual_seed(args.seed)
    theta, l1, l2 = random_kernel_params(args.samples, g)
    rows = []
    for i in range(args.samples):
        im = images[int(torch.randint(0, len(images), (1,), generator=g))]
        hr_size = 2 * args.lr_size
        h, w = min(im.shape[-2], hr_size) // 2 * 2, min(im.shape[-1], hr_size) // 2 * 2
        top = int(torch.randint(0, im.shape[-2] - h + 1, (1,), generator=g))
        left = int(torch.randint(0, im.shape[-1] - w + 1, (1,), generator=g))
        hr = im[None, :, top:top + h, left:left + w].double()
        lr = torch.round(degrade(hr, gaussian_kernel(theta[i], l1[i], l2[i], 21), 2) * 255) / 255
        learned, _ = _learned(lr.float(), "direct")
        cross, _ = _crossscale(lr.float(), "direct", 2)
        true = params_from_gaussian(theta[i], l1[i], l2[i])
        rows.append(torch.cat([learned.double(), cross.double(), true.double()]))
    data = torch.stack(rows)
    learned, cross, true = data[:, :3], data[:, 3:6], data[:, 6:]
    a = torch.stack([torch.ones(len(data)), learned[:, 0], cross[:, 0]], 1).double()
    size = torch.linalg.lstsq(a, true[:, :1]).solution[:, 0]
    b = torch.stack([torch.cat([cross[:, 1], cross[:, 2]]), torch.cat([learned[:, 1], learned[:, 2]])], 1)
    shape = torch.linalg.lstsq(b, torch.cat([true[:, 1], true[:, 2]])[:, None]).solution[:, 0]
    print("COMBINATION =", tuple(round(float(c), 4) for c in (*size, *shape)))
    if args.save:
        torch.save(data, args.save)


if __name__ == "__main__":
    main()
