"""Copy a training run's latest weights into the package as a bundled model.

Usage: python scripts/ship_weights.py training/metatrain_direct_x2 direct_x2

Checks that the run trained the kind the bundled name stands for (same kind,
subsampling mode and scales as mzsr_fast.pretrained.BUNDLED), then writes
mzsr_fast/weights/NAME.safetensors (safetensors, no pickle) with the run's
iteration count in its metadata.
"""
import argparse
import os
import sys

from mzsr_fast.pretrained import BUNDLED, ModelInfo, load_model, save_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a metatrain run folder (its latest.safetensors is shipped)")
    parser.add_argument("name", choices=sorted(BUNDLED), help="bundled model name")
    args = parser.parse_args(argv)
    net, info = load_model(os.path.join(args.run_dir, "latest.safetensors"))
    want = BUNDLED[args.name]
    got = (info.kind, info.mode, info.scales)
    if got != (want.kind, want.mode, want.scales):
        print(f"run_dir: {args.run_dir} trained {got}, but {args.name} is {(want.kind, want.mode, want.scales)}",
              file=sys.stderr)
        return 2
    target = os.path.join(os.path.dirname(__file__), "..", "mzsr_fast", "weights", f"{args.name}.safetensors")
    save_model(target, net, ModelInfo(args.name, want.kind, want.mode, want.scales, notes=info.notes))
    print(f"{args.name}: iteration {info.notes.get('step', '?')} of {args.run_dir} -> {os.path.normpath(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
