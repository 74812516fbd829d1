"""Calibrate a model's test-time learning-rate schedule on held-out training
images (never on the test sets), and optionally store the best in the file.

Usage:
  python scripts/calibrate_schedule.py MODEL.safetensors DATA_DIR [--holdout N] [--val-crop 192]
      [--kernels g_d_2.0] [--scale S] [--steps 10] [--multipliers 0.25,0.5,1,2,4] [--per-layer]
      [--keep-steps K] [--adapt-loss LOSS] [--step-search [M,...] | --no-step-search] [--write]

The candidates are the model's current schedule scaled by each multiplier
(candidates with a rate of 1 or more are left out); with --keep-steps K the
first K steps keep their rates and only the steps after them are scaled and
refined (so a one-step model's learned step stays, and with it its
MZSR(1), while its later steps are calibrated). With --per-layer, the best
of them is then refined one layer at a time, in order: that layer's rates
(weight and bias, every step) times 0.5 and times 2, each kept when it scores
higher (a per-tensor schedule results). Each is scored by the mean
MZSR(steps) PSNR over the held-out images (mzsr_fast.train.data.holdout_paths:
the split a run with --holdout N keeps out of training; N defaults to the
one the model's training run recorded) degraded with each kernel preset,
exactly as the trainer's validation does, with the model's adaptation loss
and step search or --adapt-loss and --step-search / --no-step-search.
MZSR(1) is reported alongside. With --write the best schedule (by
MZSR(steps)), and the --adapt-loss and step search given, go into MODEL's
metadata, weights unchanged.
"""
import argparse
import dataclasses
import os
import sys

from mzsr_fast.adapt import STEP_SEARCH, learning_rates
from mzsr_fast.catalogue import parse_multiples
from mzsr_fast.degradation import PRESETS
from mzsr_fast.losses import LOSSES
from mzsr_fast.model import PARAMETER_NAMES
from mzsr_fast.pretrained import format_schedule, is_per_tensor, load_model, save_model
from mzsr_fast.train.data import holdout_paths
from mzsr_fast.train.validation import load_images, mzsr_psnr


def _rows(schedule, count: int) -> list:
    """At least `count` rows of a schedule, its last entry repeated."""
    return learning_rates(schedule, max(len(schedule), count))


def scaled(schedule, factor: float, keep: int = 0):
    """Every rate of a schedule (scalar or per-tensor entries) after its first
    `keep` steps times factor (the kept steps are written out, so the scaled
    rate also covers the steps after them)."""
    rows = _rows(schedule, keep + 1)
    times = (lambda row: tuple(v * factor for v in row)) if is_per_tensor(schedule) else (lambda r: r * factor)
    return tuple(rows[:keep]) + tuple(times(row) for row in rows[keep:])


def layer_scaled(schedule, steps: int, layer: int, factor: float, keep: int = 0):
    """A per-tensor schedule of `steps` rows (the last entry repeated) with
    layer's weight and bias rates after the first `keep` steps times factor."""
    rows = [tuple(row) if is_per_tensor(schedule) else (row,) * len(PARAMETER_NAMES) for row in _rows(schedule, steps)]
    names = (f"layers.{layer}.weight", f"layers.{layer}.bias")
    return tuple(row if step < keep else tuple(v * factor if name in names else v for name, v in zip(PARAMETER_NAMES, row))
                 for step, row in enumerate(rows))


def largest_rate(schedule) -> float:
    return max(max(row) for row in schedule) if is_per_tensor(schedule) else max(schedule)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a .safetensors model file")
    parser.add_argument("data_dir", help="the training folder whose held-out split is scored")
    parser.add_argument("--holdout", type=int, help="size of the held-out split (default: the model's run's)")
    parser.add_argument("--val-crop", type=int, default=192)
    parser.add_argument("--kernels", default=None, help="kernel presets (default: g_b_1.3 for bicubic models, "
                                                        "else g_d_2.0)")
    parser.add_argument("--scale", type=int, help="the scale scored (default: the model's first)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--multipliers", default="0.25,0.5,1,2,4")
    parser.add_argument("--per-layer", action="store_true", help="then refine the best one layer at a time")
    parser.add_argument("--keep-steps", type=int, default=0, metavar="K",
                        help="leave the rates of the first K steps as they are (e.g. 1: a one-step model's "
                             "learned step, calibrating only the steps after it)")
    parser.add_argument("--adapt-loss", choices=LOSSES, help="the loss of the adaptation steps (default: the model's)")
    search = parser.add_mutually_exclusive_group()
    search.add_argument("--step-search", nargs="?", const=",".join(map(str, STEP_SEARCH)), metavar="M,M,...",
                        help=f"score with this step search (default multiples {STEP_SEARCH}; default: the model's)")
    search.add_argument("--no-step-search", dest="step_search", action="store_const", const=False,
                        help="score with the scheduled steps alone")
    parser.add_argument("--write", action="store_true",
                        help="store the best schedule (and --adapt-loss, --step-search) in MODEL")
    args = parser.parse_args(argv)
    if not 0 <= args.keep_steps < args.steps:
        parser.error(f"--keep-steps: expected 0 <= K < --steps ({args.steps}), got {args.keep_steps}")
    try:  # None: the model's; False: none
        step_search = () if args.step_search is False else \
            None if args.step_search is None else parse_multiples(args.step_search, "--step-search", allow_empty=False)
    except ValueError as error:
        parser.error(str(error))

    if not os.path.isfile(args.model):
        parser.error(f"model: {args.model} is not a file (calibrate a copy of a bundled model)")
    net, info = load_model(args.model)
    holdout = args.holdout if args.holdout is not None else int(info.notes.get("holdout", 0))
    if holdout < 1:
        parser.error("--holdout: the model's run recorded no held-out split; give the split's size")
    scale = args.scale or (info.scales[0] if info.scales else 2)
    if info.scales and scale not in info.scales:
        parser.error(f"--scale: the model was trained for scales {info.scales}, got {scale}")
    adapt_loss = args.adapt_loss or info.adapt_loss
    step_search = info.step_search if step_search is None else step_search
    kernels = args.kernels.split(",") if args.kernels else ["g_b_1.3" if info.mode == "bicubic" else "g_d_2.0"]
    images = load_images(holdout_paths(args.data_dir, holdout), scale,
                         min_lr_size=max(PRESETS[k].size for k in kernels), crop=args.val_crop)

    def score(label: str, schedule):
        scores = mzsr_psnr(net, images, kernels, scale, steps=(1, args.steps), schedule=schedule, mode=info.mode,
                           adapt_loss=adapt_loss, step_search=step_search)
        one = sum(v for k, v in scores.items() if k.endswith("_mzsr1")) / len(kernels)
        many = sum(v for k, v in scores.items() if k.endswith(f"_mzsr{args.steps}")) / len(kernels)
        each = " ".join(f"{scores[f'psnr_{k}_mzsr{args.steps}']:.3f}" for k in kernels) if len(kernels) > 1 else ""
        print(f"{label:<18} MZSR(1) {one:.3f} dB  MZSR({args.steps}) {many:.3f} dB  {each}".rstrip(), flush=True)
        return many, one, label, schedule

    results = []
    for factor in (float(m) for m in args.multipliers.split(",")):
        schedule = scaled(info.schedule, factor, args.keep_steps)
        if largest_rate(schedule) >= 1:
            print(f"x{factor:<5g} left out: a rate of 1 or more")
            continue
        results.append(score(f"x{factor:g}", schedule))
    best = max(results, key=lambda r: r[0])
    if args.per_layer:
        for layer in range(len(PARAMETER_NAMES) // 2):
            base = best
            for factor in (0.5, 2.0):
                schedule = layer_scaled(base[3], args.steps, layer, factor, args.keep_steps)
                if largest_rate(schedule) < 1:
                    best = max(best, score(f"{base[2]}, layer {layer} x{factor:g}", schedule), key=lambda r: r[0])
    print(f"best: {best[2]} ({format_schedule(best[3])}), MZSR({args.steps}) {best[0]:.3f} dB on "
          f"{len(images)} held-out images, kernels {','.join(kernels)}")
    if args.write:
        notes = dict(info.notes, calibration=f"{best[2]} on {len(images)} held-out images of {args.data_dir} "
                                             f"at scale {scale}")
        save_model(args.model, net, dataclasses.replace(info, notes=notes, own_schedule=best[3], adapt_loss=adapt_loss,
                                                        step_search=step_search))
        print(f"wrote the schedule into {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
