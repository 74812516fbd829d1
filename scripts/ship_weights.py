"""Copy a training run's weights into the package as a bundled model.

Usage: python scripts/ship_weights.py training/metatrain_direct_x2 direct_x2
       python scripts/ship_weights.py RUN/checkpoints/step-00000400.safetensors direct_x2

A run folder ships its latest.safetensors; a .safetensors path ships that file.
--init-iterations K: the run started (--init) from a meta-trained model that had
already had K iterations; the shipped file then counts K + the run's own (its
notes keep both: "step" the total, "init_iterations" K).

Checks that the file is a meta-training result (not a pretraining one) for the
kind the bundled name stands for (same kind, subsampling mode and scales as
mzsr_fast.pretrained.CATALOGUE), then writes
mzsr_fast/weights/NAME.safetensors (safetensors, no pickle) with the run's
iteration count and the weights' own test-time schedule (learned, or written
by scripts/calibrate_schedule.py), its adaptation loss and its step search in its metadata.
"""
import argparse
import dataclasses
import os
import sys

from safetensors import safe_open

from mzsr_fast.pretrained import BUNDLED, as_bundled, bundled_info, load_model, save_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="a metatrain run folder (its latest.safetensors is shipped) or one of "
                        "its .safetensors checkpoints")
    parser.add_argument("name", choices=BUNDLED, help="bundled model name")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "mzsr_fast", "weights"),
                        help="folder of the bundled models (default: the package's mzsr_fast/weights)")
    parser.add_argument("--init-iterations", type=int, default=0, metavar="K",
                        help="meta-training iterations the run's --init model had already had (default 0)")
    args = parser.parse_args(argv)
    if args.init_iterations < 0:
        print(f"--init-iterations: expected an integer >= 0, got {args.init_iterations}", file=sys.stderr)
        return 2
    path = os.path.join(args.weights, "latest.safetensors") if os.path.isdir(args.weights) else args.weights
    if not os.path.isfile(path):
        print(f"weights: {path} does not exist (expected a metatrain run folder or a .safetensors file)",
              file=sys.stderr)
        return 2
    if not os.path.isdir(args.out):
        print(f"--out: {args.out} is not a folder", file=sys.stderr)
        return 2
    try:  # load_model refuses, naming the file, what is not a readable model file
        net, info = load_model(path)
    except ValueError as error:
        print(f"weights: {str(error).removeprefix('model: ')}", file=sys.stderr)
        return 2
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("stage") == "pretrain" or not {"kind", "mode", "scales"} <= set(meta):
        print(f"weights: {path} is not a meta-training result (metadata {meta})", file=sys.stderr)
        return 2
    want = bundled_info(args.name)
    got = (info.kind, info.mode, info.scales)
    if got != (want.kind, want.mode, want.scales):
        print(f"weights: {path} trained {got}, but {args.name} is {(want.kind, want.mode, want.scales)}",
              file=sys.stderr)
        return 2
    notes = dict(info.notes)
    if args.init_iterations:
        if not notes.get("step", "").isdigit():
            print(f"--init-iterations: {path} records no iteration count to add it to", file=sys.stderr)
            return 2
        notes.update(step=str(args.init_iterations + int(notes["step"])), init_iterations=str(args.init_iterations))
    target = os.path.join(args.out, f"{args.name}.safetensors")
    save_model(target, net, dataclasses.replace(as_bundled(info, args.name), notes=notes))
    print(f"{args.name}: iteration {notes.get('step', '?')} of {path} -> {os.path.normpath(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
