"""What the pixel budget of adaptation (adapt_pixels, mzsr_fast.budget) costs in quality and
saves in time: MZSR(n) of photos adapted on windows of N pixels per step against the same
photos adapted whole.

    python scripts/measure_budget.py PHOTO_OR_FOLDER... --budgets 16384,32768,65536 \\
        --kernel g_d_2.0 --out budget.jsonl [--variants texture,uniform,fixed] [--table]

Each photo (the ground truth) is cropped to a multiple of the scale, degraded with the
kernel (a preset, or "random": each photo its own draw of the blind benchmark's
distribution, from --seed) and rounded to 8 bits; the LR is super-resolved with
adapt_pixels=0 (whole) and with every budget, and scored as `mzsr-fast eval` scores
(Y channel, scale-pixel shave). Variants of the window draw: "texture" (the package's:
redrawn every step, weighted by texture), "uniform" (redrawn every step, uniform), "fixed"
(the first step's texture-weighted windows for every step). Results are appended to --out
one JSON line per run, and runs already there are skipped, so an interrupted measurement
continues; --table prints the markdown summary of --out.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

import mzsr_fast as mz
from mzsr_fast import budget, metrics
from mzsr_fast.blind import random_kernel_params
from mzsr_fast.evaluation import degraded_lr, modcrop, quantise
from mzsr_fast.gaussian import gaussian_kernel
from mzsr_fast.io import IMAGE_EXTENSIONS, read_image


@contextlib.contextmanager
def variant(name: str):
    """The window draw of a variant, for the duration of the block."""
    if name == "texture":
        yield
        return
    if name == "uniform":
        saved = budget.TEXTURE_FLOOR
        budget.TEXTURE_FLOOR = 1e12  # the floor swamps the texture: every corner alike
        try:
            yield
        finally:
            budget.TEXTURE_FLOOR = saved
        return
    if name == "fixed":
        draw, first = budget.Budget.draw, {}

        def fixed_draw(self, weights, generator):
            if "windows" not in first:
                first["windows"] = draw(self, weights, generator)
            return first["windows"]

        budget.Budget.draw = fixed_draw
        try:
            yield
        finally:
            budget.Budget.draw = draw
        return
    raise ValueError(f"--variants: unknown variant {name!r}")


def photos(items: list[str]) -> list[str]:
    out = []
    for item in items:
        if os.path.isdir(item):
            out += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            out.append(item)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="*", help="ground-truth photos or folders of them")
    parser.add_argument("--budgets", default="16384,32768,65536", help="comma-separated adapt_pixels values")
    parser.add_argument("--variants", default="texture", help="texture, uniform, fixed (comma-separated)")
    parser.add_argument("--kernel", default="g_d_2.0", help="a preset, or 'random' (one draw per photo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kernels and of the windows")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", help="default: the bundled model for the kernel and scale")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", type=int, default=0, metavar="N",
                        help="instead: cut N frames of --frame-size pixels from each photo and compare adapting "
                             "each alone (at the default budget) with one adaptation shared by all (share=True)")
    parser.add_argument("--frame-size", type=int, default=512, metavar="PX", help="HR side of a frame")
    parser.add_argument("--out", required=True, help="JSON lines, appended")
    parser.add_argument("--table", action="store_true", help="print the summary of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    torch.set_num_threads(args.threads)
    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = {(r["photo"], r["kernel"], r["variant"], r["budget"], r["steps"]) for r in map(json.loads, f)}
    files = photos(args.photos)
    kernels = {}
    if args.kernel == "random":
        generator = torch.Generator().manual_seed(args.seed)
        for path, (theta, l1, l2) in zip(files, zip(*random_kernel_params(len(files), generator))):
            kernels[path] = (gaussian_kernel(theta, l1, l2, 21), f"{float(theta):.4f},{float(l1):.4f},{float(l2):.4f}")
    if args.frames:
        for path in files:
            kernel, label = kernels[path] if args.kernel == "random" else (mz.preset(args.kernel).kernel, args.kernel)
            if (os.path.basename(path), label, "frames", args.frames, args.steps) not in done:
                shared_frames(path, kernel, label, args)
        return 0
    runs = [("whole", 0)] + [(v, int(b)) for v in args.variants.split(",") for b in args.budgets.split(",")]
    for path in files:
        kernel, label = kernels[path] if args.kernel == "random" else (mz.preset(args.kernel).kernel, args.kernel)
        gt = modcrop(read_image(path, torch.float64), args.scale)
        lr = degraded_lr(gt, kernel, args.scale, None if args.kernel == "random" else mz.preset(args.kernel).mode)
        for name, pixels in runs:
            key = (os.path.basename(path), label, name, pixels, args.steps)
            if key in done:
                continue
            with variant(name if name != "whole" else "texture"):
                start = time.perf_counter()
                sr = mz.adapt(lr.float(), kernel, args.scale, steps=args.steps, model=args.model,
                              precision=args.precision, adapt_pixels=pixels, seed=args.seed)
                seconds = time.perf_counter() - start
            psnr, ssim = metrics.psnr_ssim(quantise(sr.double()), gt, args.scale)
            row = dict(photo=key[0], kernel=label, variant=name, budget=pixels, steps=args.steps,
                       lr_pixels=lr.shape[-2] * lr.shape[-1], psnr=psnr, ssim=ssim, seconds=seconds)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), file=sys.stderr, flush=True)
    return 0


def shared_frames(path: str, kernel, label: str, args) -> None:
    """args.frames frames of one photo (HR crops of args.frame_size on a grid, degraded
    alike) adapted each alone and all together (share=True): one JSON line with the
    mean PSNR and the seconds of each."""
    gt = modcrop(read_image(path, torch.float64), args.scale)
    side = args.frame_size
    rows, cols = gt.shape[-2] // side, gt.shape[-1] // side
    if rows * cols < args.frames:
        print(f"{path}: too small for {args.frames} frames of {side} px, skipped", file=sys.stderr)
        return
    crops = [gt[:, r * side:(r + 1) * side, c * side:(c + 1) * side]
             for r in range(rows) for c in range(cols)][:args.frames]
    mode = None if args.kernel == "random" else mz.preset(args.kernel).mode
    lrs = [degraded_lr(crop, kernel, args.scale, mode).float() for crop in crops]
    row = dict(photo=os.path.basename(path), kernel=label, variant="frames", budget=args.frames, steps=args.steps,
               frame_lr_pixels=lrs[0].shape[-2] * lrs[0].shape[-1])
    for name, run in (("alone", lambda: [mz.adapt(lr, kernel, args.scale, steps=args.steps, model=args.model,
                                                  seed=args.seed) for lr in lrs]),
                      ("shared", lambda: mz.adapt(lrs, kernel, args.scale, steps=args.steps, model=args.model,
                                                  seed=args.seed, share=True))):
        start = time.perf_counter()
        srs = run()
        row[f"{name}_seconds"] = time.perf_counter() - start
        row[f"{name}_psnr"] = statistics.mean(metrics.psnr_ssim(quantise(sr.double()), crop, args.scale)[0]
                                              for sr, crop in zip(srs, crops))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), file=sys.stderr, flush=True)


def table(path: str) -> str:
    """Markdown: per (kernel, variant, budget), the mean and worst PSNR change
    against whole-image adaptation over the photos of at least 4x that many
    LR pixels, and the mean adaptation-and-inference seconds."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    frames = [r for r in rows if r["variant"] == "frames"]
    rows = [r for r in rows if r["variant"] != "frames"]
    whole = {(r["photo"], r["kernel"], r["steps"]): r for r in rows if r["variant"] == "whole"}
    groups: dict = {}
    for r in rows:
        base = whole.get((r["photo"], r["kernel"], r["steps"]))
        if r["variant"] == "whole" or base is None or r["lr_pixels"] < 4 * r["budget"]:
            continue
        kind = "random" if "," in r["kernel"] else r["kernel"]
        groups.setdefault((kind, r["steps"], r["variant"], r["budget"]), []).append((r, base))
    lines = ["| kernel | steps | draw | budget (LR px) | photos | PSNR change mean / worst (dB) | "
             "seconds budget / whole |", "|---|---|---|---|---|---|---|"]
    for (kind, steps, name, pixels), pairs in sorted(groups.items()):
        deltas = [r["psnr"] - b["psnr"] for r, b in pairs]
        lines.append(f"| {kind} | {steps} | {name} | {pixels} | {len(pairs)} | {statistics.mean(deltas):+.3f} / "
                     f"{min(deltas):+.3f} | {statistics.mean(r['seconds'] for r, _ in pairs):.1f} / "
                     f"{statistics.mean(b['seconds'] for _, b in pairs):.1f} |")
    if frames:
        lines += ["", "| photo | kernel | frames | frame LR px | PSNR alone / shared (dB) | seconds alone / shared |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['photo']} | {r['kernel']} | {r['budget']} | {r['frame_lr_pixels']} | {r['alone_psnr']:.2f} / "
                  f"{r['shared_psnr']:.2f} | {r['alone_seconds']:.1f} / {r['shared_seconds']:.1f} |" for r in frames]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
