"""Blind mode on large images: the kernel estimated on the whole LR image
against the estimate on its most textured windows (blind.ESTIMATE_SIDE,
blind.ESTIMATE_WINDOWS), kernel L1 against the true kernel and time.

    python scripts/measure_blind_windows.py PHOTOS --sides 256,512 --windows 1,2,4 --kernels 3 --out results.jsonl

Each photo (an HR image) is degraded at --scale with --kernels random kernels
(blind.random_kernel_params, seeded) and quantised to 8 bits; one JSON line per
(photo, kernel, setting)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mzsr_fast import blind, io
from mzsr_fast.degradation import degrade
from mzsr_fast.gaussian import gaussian_kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--sides", default="256,512")
    parser.add_argument("--windows", default="1,2,4")
    parser.add_argument("--kernels", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    settings = [(None, None)] + [(int(s), int(k)) for s in args.sides.split(",") for k in args.windows.split(",")]
    with args.out.open("a") as out:
        for path in sorted(args.photos.iterdir()):
            hr = io.read_image(path)
            for theta, lambda1, lambda2 in zip(*blind.random_kernel_params(args.kernels, generator, args.scale)):
                true = gaussian_kernel(theta, float(lambda1), float(lambda2), blind.KERNEL_SIZE)
                lr = (degrade(hr, true.float(), args.scale) * 255).round() / 255
                for side, count in settings:
                    if side is not None and lr.shape[-2] * lr.shape[-1] <= side * side:
                        continue  # estimated whole: the same as the first setting
                    blind.ESTIMATE_SIDE = side or 10 ** 6
                    blind.ESTIMATE_WINDOWS = count or 1
                    start = time.process_time()
                    estimate = blind.estimate_kernel(lr, args.scale)
                    row = {"photo": path.name, "lr": list(lr.shape[-2:]), "kernel": [float(theta), float(lambda1),
                           float(lambda2)], "side": side, "windows": count,
                           "l1": blind.kernel_l1(estimate.kernel, true), "cpu_s": time.process_time() - start}
                    out.write(json.dumps(row) + "\n")
                    out.flush()


if __name__ == "__main__":
    main()
