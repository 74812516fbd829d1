"""Train the learned blur-kernel estimator (mzsr_fast/_kernelnet.KernelNet).

Synthetic LR patches are made on the fly from the training images (T91 + BSD200):
a random HR crop, a random anisotropic Gaussian (variances 0.2..5, any angle),
blur + direct or bicubic x2 subsampling (mzsr_fast.degradation), rounding to
8 bits. Every tenth image is held out for validation. The loss is the kernel L1
error (the benchmark's metric, sum |k_est - k_true| over 21 x 21) plus a
squared error on the matrix-log parameters, which has no angle ambiguity.
Validation: the held-out images whole, as the estimator is used, each with
VAL_KERNELS random kernels of the blind benchmark's distribution (direct x2,
fixed seed), one network view (blind.estimate_kernel averages four).

    python scripts/train_kernel_estimator.py ../shared/data/train --minutes 45 --param-weight 0.5 \
        --out mzsr_fast/weights/kernel_estimator.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from safetensors.torch import load_file, save_file

from mzsr_fast._kernelnet import KernelNet, kernels_from_params, luma, params_from_gaussian
from mzsr_fast.blind import random_kernel_params
from mzsr_fast.evaluation import degraded_lr, modcrop
from mzsr_fast.gaussian import gaussian_kernel
from mzsr_fast.io import IMAGE_EXTENSIONS, read_image
from mzsr_fast.ops.blur_downsample import blur_downsample

MARGIN = 8  # HR pixels on each side that are cropped away after degradation (no synthetic border)
VARIANCE = (0.2, 5.0)
VAL_KERNELS = 2  # random kernels per held-out image
VAL_MIN_LR = 48  # held-out images need an LR at least this large on each side


def load_images(root: str, patch: int, scale: int = 2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Luma [1, H, W] of the images under root, sorted by path, split into
    (training, validation: every tenth), each keeping those large enough for
    an LR patch of patch x patch at this scale."""
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    hr = scale * patch + 2 * MARGIN
    images = [luma(read_image(p)[None])[0] for p in paths]
    split = ([im for i, im in enumerate(images) if i % 10], images[::10])
    return tuple([im for im in part if min(im.shape[-2:]) >= hr] for part in split)


def sample_kernels(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """theta ~ U[0, pi); variances from a mixture: half the benchmark's (lambda1
    ~ U[0.2, 5], lambda2 ~ U[0.2, lambda1]), a quarter log-uniform pairs and a
    quarter log-uniform isotropic (the presets are isotropic, and sharp kernels
    need dense samples)."""
    lo, hi = VARIANCE
    u = torch.rand(4, n, generator=g, dtype=torch.float64)
    theta = math.pi * u[0]
    kind = torch.tensor([0, 0, 1, 2])[torch.randint(0, 4, (n,), generator=g)]
    uniform1 = lo + (hi - lo) * u[1]
    uniform2 = lo + (uniform1 - lo) * u[2]
    log1 = torch.exp(math.log(lo) + math.log(hi / lo) * u[1])
    log2 = torch.exp(math.log(lo) + math.log(hi / lo) * u[2])
    l1 = torch.where(kind == 0, uniform1, log1)
    l2 = torch.where(kind == 0, uniform2, torch.where(kind == 1, log2, log1))
    return theta, torch.maximum(l1, l2), torch.minimum(l1, l2)


def make_batch(images, n: int, patch: int, g: torch.Generator, bicubic_fraction: float = 0.25):
    """(lr [n, 1, patch, patch], bicubic [n] bool, theta, lambda1, lambda2 [n])."""
    hr_size = 2 * patch + 2 * MARGIN
    crops = []
    for i in torch.randint(0, len(images), (n,), generator=g).tolist():
        im = images[i]
        top = int(torch.randint(0, im.shape[-2] - hr_size + 1, (1,), generator=g))
        left = int(torch.randint(0, im.shape[-1] - hr_size + 1, (1,), generator=g))
        crops.append(im[:, top:top + hr_size, left:left + hr_size])
    hr = torch.stack(crops).double()
    theta, l1, l2 = sample_kernels(n, g)
    kernels = gaussian_kernel(theta, l1, l2, 21)
    bicubic = torch.rand(n, generator=g) < bicubic_fraction
    lr = torch.empty(n, 1, hr_size // 2, hr_size // 2, dtype=torch.float64)
    for flag in (False, True):
        sel = bicubic == flag
        if sel.any():
            lr[sel] = blur_downsample(hr[sel], kernels[sel], 2, mode="bicubic" if flag else "direct")
    m = MARGIN // 2
    lr = torch.round(lr[..., m:m + patch, m:m + patch].clamp(0, 1) * 255) / 255
    return lr.float(), bicubic, theta, l1, l2


def benchmark_lr(hr: torch.Tensor, theta, lambda1, lambda2, mode: str = "direct", scale: int = 2) -> torch.Tensor:
    """The LR of hr [1, 1, H, W] (cropped to multiples of scale) as the blind benchmark makes it
    (evaluation.degraded_lr: float64, 8 bits) with the kernel (theta, lambda1, lambda2)."""
    kernel = gaussian_kernel(torch.as_tensor(theta, dtype=torch.float64), lambda1, lambda2, 21)
    return degraded_lr(modcrop(hr, scale), kernel, scale, mode)


def validation_set(images, seed: int = 1234) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(lr [1, 1, h, w], theta, lambda1, lambda2 [1]) for each image (whole, luma [1, H, W]) and VAL_KERNELS
    kernels of blind.random_kernel_params, degraded as the blind benchmark does (direct x2, 8 bits)."""
    theta, l1, l2 = random_kernel_params(VAL_KERNELS * len(images), torch.Generator().manual_seed(seed))
    return [(benchmark_lr(im[None], theta[i], float(l1[i]), float(l2[i])).float(), theta[i:i + 1], l1[i:i + 1],
             l2[i:i + 1]) for i, im in enumerate(images * VAL_KERNELS)]


def kernel_l1(p: torch.Tensor, theta, l1, l2) -> torch.Tensor:
    """[n] sum |k_est - k_true| over 21 x 21."""
    true = gaussian_kernel(theta, l1, l2, 21).float()
    return (kernels_from_params(p) - true).abs().sum((-2, -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="training images folder (T91 + BSD200)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=48, help="LR patch size")
    parser.add_argument("--init", help="start from these weights (a file this script wrote)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--param-weight", type=float, default=0.25,
                        help="weight of the squared error on the matrix-log parameters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_images = load_images(args.data, args.patch)[0]
    val = validation_set(load_images(args.data, VAL_MIN_LR)[1])
    direct = torch.tensor([False])
    g = torch.Generator().manual_seed(args.seed)
    net = KernelNet()
    if args.init:
        net.load_state_dict(load_file(args.init))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    budget = args.minutes * 60
    start, step = time.perf_counter(), 0

    def validate() -> float:
        net.eval()
        with torch.no_grad():
            errors = torch.cat([kernel_l1(net(lr, direct), t, l1, l2) for lr, t, l1, l2 in val])
        net.train()
        return float(errors.mean())

    while (elapsed := time.perf_counter() - start) < budget:
        for group in opt.param_groups:  # cosine decay over the time budget
            group["lr"] = args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        lr, bicubic, theta, l1, l2 = make_batch(train_images, args.batch_size, args.patch, g)
        p = net(lr, bicubic)
        target = params_from_gaussian(theta, l1, l2).float()
        loss = kernel_l1(p, theta, l1, l2).mean() + args.param_weight * ((p - target) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 250 == 0:
            entry = {"step": step, "minutes": round(elapsed / 60, 2), "loss": round(loss.item(), 4),
                     "val_kernel_l1": round(validate(), 4)}
            print(json.dumps(entry), flush=True)
            save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, args.out + ".partial")
    final = validate()
    print(json.dumps({"step": step, "final_val_kernel_l1": round(final, 4)}), flush=True)
    meta = {"format": "mzsr_fast.kernel_estimator", "lr_patch": str(args.patch), "init": args.init or "", "steps": str(step),
            "batch_size": str(args.batch_size), "val_kernel_l1": f"{final:.4f}", "seed": str(args.seed),
            "minutes": f"{args.minutes:g}", "param_weight": f"{args.param_weight:g}"}
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, args.out, metadata=meta)


if __name__ == "__main__":
    main()
