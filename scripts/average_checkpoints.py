"""Average checkpoints of one meta-training run into one model file.

Usage: python scripts/average_checkpoints.py OUT.safetensors CHECKPOINT.safetensors CHECKPOINT.safetensors ...

The uniform mean of the weights and of the learned test-time schedules
(every rate, step by step) of two or more model files of the same kind,
subsampling, scales and adaptation loss, with the same number of schedule
steps: stochastic weight averaging over a run's last checkpoints, which lie
close together when the meta rate is small, so their mean scores like a
network trained on all their batches with less of the last few batches'
noise. OUT takes the info of the newest checkpoint (its "step" note, the
highest) and notes which steps were averaged ("averaged"). Ship it with
scripts/ship_weights.py like any checkpoint.
"""
import argparse
import dataclasses
import os
import sys

from mzsr_fast.pretrained import is_per_tensor, load_model, save_model


def _step(info) -> int:
    return int(info.notes["step"]) if str(info.notes.get("step", "")).isdigit() else -1


def mean_schedule(schedules):
    """The step-by-step mean of equally long schedules (scalar rates or per-tensor rows)."""
    if is_per_tensor(schedules[0]):
        return tuple(tuple(sum(rates) / len(rates) for rates in zip(*rows)) for rows in zip(*schedules))
    return tuple(sum(rates) / len(rates) for rates in zip(*schedules))


def average(paths: list[str]):
    """(net, info): the mean of the model files at paths; ValueError naming a
    file that cannot be averaged with the first."""
    models = [load_model(path) for path in paths]
    first_net, first = models[0]
    for path, (_, info) in zip(paths[1:], models[1:]):
        for field in ("kind", "mode", "scales", "adapt_loss"):
            if getattr(info, field) != getattr(first, field):
                raise ValueError(f"{path}: {field} {getattr(info, field)!r}, but {paths[0]} has "
                                 f"{getattr(first, field)!r}: average checkpoints of one run")
        if len(info.schedule) != len(first.schedule) or is_per_tensor(info.schedule) != is_per_tensor(first.schedule):
            raise ValueError(f"{path}: its schedule has another shape than {paths[0]}'s: average checkpoints of one run")
    states = [net.state_dict() for net, _ in models]
    first_net.load_state_dict({name: sum(state[name] for state in states) / len(states) for name in states[0]})
    newest = max((info for _, info in models), key=_step)
    steps = sorted(_step(info) for _, info in models)
    notes = dict(newest.notes, averaged=",".join(str(s) for s in steps) if min(steps) >= 0 else f"{len(paths)} files")
    return first_net, dataclasses.replace(newest, notes=notes,
                                          own_schedule=mean_schedule([info.schedule for _, info in models]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the averaged model file to write")
    parser.add_argument("checkpoints", nargs="+", help="two or more .safetensors model files of one run")
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        parser.error(f"checkpoints: expected two or more files, got {len(args.checkpoints)}")
    if os.path.abspath(args.out) in {os.path.abspath(p) for p in args.checkpoints}:
        parser.error(f"out: {args.out} is one of the checkpoints; write the average to another file")
    for path in args.checkpoints:
        if not os.path.isfile(path):
            parser.error(f"checkpoints: {path} is not a file")
    try:
        net, info = average(args.checkpoints)
        save_model(args.out, net, info)
    except ValueError as error:
        print(f"average_checkpoints: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: the mean of {len(args.checkpoints)} checkpoints (steps {info.notes['averaged']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
