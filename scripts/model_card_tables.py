"""Measured PSNR/SSIM tables for a model card, with `mzsr_fast.evaluation` (what
`mzsr-fast eval` runs), next to bicubic and the paper's numbers (docs/method.md section 10).

Usage: python scripts/model_card_tables.py --model PATH [--pretrained PATH]
       [--data ../shared/data] [--sets Set5,Set14] [--presets g_d_2.0,...] [--scale 2] [--no-step-search]
       > tables.md

The model adapts as `mzsr-fast eval` adapts it (its own loss and step search);
--no-step-search scores its scheduled steps alone.
"""
import argparse
import sys
import time

import torch

from mzsr_fast.evaluation import evaluate

# Paper, Set5, (scale, kernel): Bicubic, MZSR(1), MZSR(10), PSNR only.
PAPER_SET5 = {
    (2, "g_d_0.2"): (30.24, 33.14, 33.74),
    (2, "g_d_2.0"): (28.73, 35.20, 36.05),
    (2, "g_d_ani"): (28.15, 34.05, 34.78),
    (2, "g_b_1.3"): (30.54, 35.18, 36.64),
    (4, "g_d_2.0"): (24.74, 30.20, 30.50),
}


def mean(scores, steps):
    group = [s for s in scores if s.steps == steps]
    return (sum(s.psnr for s in group) / len(group), sum(s.ssim for s in group) / len(group),
            sum(s.seconds for s in group) / len(group))


def cell(value):
    return f"{value[0]:.2f} / {value[1]:.4f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pretrained", help="pretrained-only weights, adapted the same way")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--sets", default="Set5,Set14")
    parser.add_argument("--presets", default="g_d_0.2,g_d_2.0,g_d_ani,g_b_1.3")
    parser.add_argument("--steps", default="0,1,10")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--no-step-search", dest="step_search", action="store_const", const=False,
                        help="the scheduled steps alone, also for a model that searches by default")
    args = parser.parse_args(argv)
    options = {} if args.step_search is None else {"step_search": args.step_search}
    steps = [int(s) for s in args.steps.split(",")]
    columns = ["Bicubic"] + [f"MZSR({n})" for n in steps]
    if args.pretrained:
        columns += [f"pretrained-only({n})" for n in steps if n > 0]
    print(f"x{args.scale}, PSNR (dB) / SSIM on the Y channel (docs/method.md section 9); measured {time.strftime('%Y-%m-%d')}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads.\n")
    for dataset in args.sets.split(","):
        print(f"#### {dataset}\n")
        print("| kernel | " + " | ".join(columns) + " | paper Bicubic / MZSR(1) / MZSR(10) |")
        print("|---" * (len(columns) + 2) + "|")
        for kernel in args.presets.split(","):
            gt = f"{args.data}/{dataset}"
            row = [cell(mean(evaluate(gt, kernel, args.scale, [0], method="bicubic"), 0))]
            ours = evaluate(gt, kernel, args.scale, steps, model=args.model, **options)
            row += [cell(mean(ours, n)) for n in steps]
            if args.pretrained:
                base = evaluate(gt, kernel, args.scale, [n for n in steps if n > 0],
                                model=args.pretrained, **options)
                row += [cell(mean(base, n)) for n in steps if n > 0]
            published = PAPER_SET5.get((args.scale, kernel)) if dataset == "Set5" else None
            paper = " / ".join(f"{p:.2f}" for p in published) if published else "n/a"
            print(f"| {kernel} | " + " | ".join(row) + f" | {paper} |")
            sys.stdout.flush()
        seconds = mean(ours, max(steps))[2]
        print(f"\nMean seconds per image for MZSR({max(steps)}) on {dataset}, last kernel: {seconds:.2f}\n")


if __name__ == "__main__":
    main()
