"""The `mzsr-fast pretrain` and `mzsr-fast metatrain` subcommands.

    mzsr-fast pretrain DATA_DIR --out RUN_DIR [options]
    mzsr-fast metatrain DATA_DIR --init PRETRAINED --out RUN_DIR [options]
    torchrun --nproc_per_node=N -m mzsr_fast.cli metatrain ...   (data parallel)

A stopped run (Ctrl-C, SIGTERM) saves a checkpoint and exits with code 130;
the same command with --resume continues it exactly (--resume-or-start: the
same command also makes the first start). Exit code 2: bad settings or data,
a run folder in use by another process, --resume without a readable
checkpoint, a loss that stopped being finite.
"""
from __future__ import annotations

import argparse

__all__ = ["register_train_commands"]


def _int_at_least(minimum: int, expected: str):
    """An argparse type: an integer >= minimum, else an error saying `expected ...`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_count = _int_at_least(0, "an integer >= 0")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _common(parser: argparse.ArgumentParser, checkpoint_every: int, log_every: int) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder of training images (PNG/JPEG/BMP, recursive)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run folder: latest.safetensors, checkpoints/, log.csv, config.json")
    parser.add_argument("--iterations", type=_positive_int, help="total iterations of the run")
    parser.add_argument("--seed", type=_count, default=0, help="seed of the initialisation and the data stream")
    parser.add_argument("--checkpoint-every", type=_count, default=checkpoint_every, metavar="M",
                        help=f"save a checkpoint every M iterations (and at the end, and on a stop signal; "
                             f"default {checkpoint_every}; 0: only then)")
    parser.add_argument("--keep", type=_count, default=3, metavar="N",
                        help="keep the last N readable checkpoints (0: all)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its newest readable checkpoint (an error when "
                             "there is none)")
    resume.add_argument("--resume-or-start", action="store_true",
                        help="as --resume, but start a new run when RUN_DIR has no checkpoint (one command for "
                             "the first start and every restart)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even though a setting differs from the checkpoint's (listed on stderr)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--threads", type=_positive_int, help="CPU threads for torch")
    parser.add_argument("--validate-every", type=_count, default=0, metavar="V",
                        help="validate every V iterations on --val-dir (0: never)")
    parser.add_argument("--val-dir", metavar="FOLDER", help="held-out images for validation")
    parser.add_argument("--holdout", type=_count, default=0, metavar="N",
                        help="keep N images of DATA_DIR out of training and validate on them (without --val-dir)")
    parser.add_argument("--val-crop", type=_count, default=0, metavar="PX",
                        help="validate on the central PX x PX pixels of each image (0: whole images)")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 mixed precision (autocast on the CPU or CUDA; weights, updates and losses fp32)")
    parser.add_argument("--log-every", type=_positive_int, default=log_every, metavar="L",
                        help=f"log (CSV, progress) every L iterations (default {log_every})")
    parser.add_argument("--prefetch", type=_positive_int, help="batches prepared ahead by the loader thread")
    parser.add_argument("--flat-threshold", type=float,
                        help="reject patches whose mean squared gradient is below this (default exp(-6))")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")


def _config(cls, args, **fields):
    """A config dataclass from parsed arguments (None: the dataclass default)."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values.update({k: v for k, v in fields.items() if v is not None})
    return cls(**values)


def _finish(kind: str, result) -> None:
    import os
    import sys
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if result.interrupted:
        # the checkpoint is saved; main's exit code 130 tells a scheduler the run is not finished
        if main_rank:
            print(f"mzsr-fast {kind}: stopped at iteration {result.step}; resume with the same command and "
                  f"--resume", file=sys.stderr)
        raise KeyboardInterrupt
    if main_rank:
        print(f"{kind}: {result.step} iterations done; weights in {result.latest}")


def cmd_pretrain(args) -> None:
    from .pretrain import PretrainConfig, pretrain
    _finish("pretrain", pretrain(_config(PretrainConfig, args)))


def cmd_metatrain(args) -> None:
    from .checkpoints import CheckpointManager
    from .metatrain import MetatrainConfig, metatrain
    if args.init is None:  # only a resumed run may do without: it takes its checkpoint's weights
        if not (args.resume or args.resume_or_start):
            raise ValueError("--init: the pretrained weights to start from are required (a resumed run, "
                             "--resume or --resume-or-start, takes its checkpoint's instead)")
        if args.resume_or_start and not CheckpointManager(args.out).list():
            raise ValueError(f"--init: {args.out} has no checkpoint to resume from, so a new run starts there "
                             f"and needs the pretrained weights to start from")
    config = _config(MetatrainConfig, args, order=1 if args.first_order else None)
    _finish("metatrain", metatrain(config))


def register_train_commands(commands) -> None:
    """Add pretrain and metatrain to the subparsers of the mzsr-fast parser."""
    pre = commands.add_parser(
        "pretrain", help="large-scale pretraining on bicubic pairs (docs/method.md section 6)",
        description="Large-scale pretraining: L1 on (bicubic-up(bicubic-down(HR)), HR) patches, Adam with "
                    "lr halved every --lr-halve-every iterations down to --lr-floor.")
    _common(pre, checkpoint_every=1000, log_every=100)
    pre.add_argument("--patch-size", type=_positive_int, help="HR patch size (default 96)")
    pre.add_argument("--batch-size", type=_positive_int, help="patches per iteration, all processes (default 32)")
    pre.add_argument("--scale", type=float, help="downscaling factor of the pairs (default 2)")
    pre.add_argument("--lr", type=float, help="Adam learning rate (default 4e-4)")
    pre.add_argument("--lr-halve-every", type=_positive_int, help="halve the rate every N iterations (default 100000)")
    pre.add_argument("--lr-floor", type=float, help="lowest learning rate (default 1e-4)")
    pre.add_argument("--init", help="start from these weights (.safetensors or a run folder)")
    pre.set_defaults(run=cmd_pretrain)

    from ..catalogue import ADAPT_LOSSES, CATALOGUE
    meta = commands.add_parser(
        "metatrain", help="meta-transfer learning with MAML (docs/method.md section 7)",
        description="Meta-transfer learning: tasks of one random blur kernel each, inner SGD steps on a "
                    "support set, MAML++ multi-step loss on the query set, meta Adam.")
    _common(meta, checkpoint_every=1000, log_every=10)
    meta.add_argument("--init", metavar="PRETRAINED",
                      help="pretrained weights (.safetensors or a pretraining run folder) a new run starts from; "
                           "a resumed run takes its checkpoint's and neither loads nor needs this file")
    meta.add_argument("--variant", choices=sorted(CATALOGUE), help="direct_x2 (default), bicubic_x2, direct_x4 or "
                      "multiscale (scale per task from 2.0, 2.2, ..., 4.0)")
    meta.add_argument("--meta-batch", type=_positive_int, help="tasks per meta-iteration, all processes (default 5)")
    meta.add_argument("--task-batch", type=_positive_int,
                      help="patches in each of the support and query sets of a task (default 8)")
    meta.add_argument("--patch-size", type=_positive_int, help="HR patch size (default 64)")
    meta.add_argument("--inner-steps", type=_positive_int, help="SGD steps per task (default 5)")
    meta.add_argument("--inner-lr", type=float, help="inner SGD rate alpha (default 0.01)")
    meta.add_argument("--learn-inner-lr", action="store_true", default=None,
                      help="learn one inner rate per step and parameter tensor (MAML++)")
    meta.add_argument("--inner-lr-from-init", action="store_true", default=None,
                      help="with --learn-inner-lr: the rates start from the --init model's own test-time schedule "
                           "(its learned or reference rates) instead of --inner-lr")
    meta.add_argument("--meta-lr", type=float, help="meta Adam rate beta (default 1e-4)")
    meta.add_argument("--order", type=int, choices=(1, 2), help="gradient order (default 2)")
    meta.add_argument("--first-order", action="store_true", help="same as --order 1")
    meta.add_argument("--first-order-until", type=_count, metavar="I",
                      help="first order for iterations < I, then --order (default 0)")
    meta.add_argument("--no-msl", dest="msl", action="store_false", default=None,
                      help="meta loss after the last inner step only (no MAML++ multi-step loss)")
    meta.add_argument("--msl-decay", type=float, help="per-iteration fall of the early MSL weights (default 1/K/3333; "
                                                         "0 keeps them all at 1/K, the first step's loss included)")
    meta.add_argument("--adapt-loss", choices=ADAPT_LOSSES,
                      help="the loss the inner steps descend, and the trained model's test-time loss (default l1, "
                           "the paper's; charbonnier: smooth, for large first steps; see docs/method.md)")
    meta.add_argument("--kernel-min-variance", type=float, metavar="V",
                      help="smallest variance of the task kernels (default 1, the paper's; 0.2 takes in kernels "
                           "as sharp as g_d_0.2's)")
    meta.add_argument("--kernel-size", type=_positive_int, help="size of the task kernels (default 15)")
    meta.add_argument("--val-kernels", type=_name_list, metavar="PRESETS",
                      help="kernel presets validated on (default: the variant's, e.g. g_d_2.0)")
    meta.add_argument("--val-steps", type=_int_list, metavar="N,..", help="MZSR(n) steps validated (default 1,10)")
    meta.set_defaults(run=cmd_metatrain)
