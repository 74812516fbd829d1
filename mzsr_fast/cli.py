"""The mzsr-fast command (also `python -m mzsr_fast`).

Exit codes: 0 success, 2 bad usage or bad input, 1 failure. Errors are one
line on stderr; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources

import torch

EXAMPLES = {"example": "butterfly_hr.png", "example-lr": "butterfly_lr_g_d_2.0.png"}


class UsageError(ValueError):
    """Bad arguments or input: exit code 2."""


def example_path(name: str = "example") -> str:
    """Path of a bundled example image: "example" (HR butterfly from Set5) or
    "example-lr" (its x2 g_d_2.0 degradation from the reference repository)."""
    return str(resources.files("mzsr_fast") / "data" / EXAMPLES[name])


def _input_paths(inputs: list[str]) -> list[str]:
    """Expand the INPUT arguments: files, folders (their images) and the example names."""
    from .io import IMAGE_EXTENSIONS

    paths = []
    for item in inputs:
        if item in EXAMPLES:
            paths.append(example_path(item))
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise UsageError(f"{item}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            paths.extend(found)
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder")
    return paths


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: not a device name: {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: CUDA was asked for but no CUDA device is available")
    return device


def _output_path(out_dir: str, input_path: str, suffix: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(input_path))[0]
    return os.path.join(out_dir, f"{stem}{suffix}.png")


def cmd_degrade(args) -> None:
    from .degradation import degrade, load_kernel
    from .io import read_image, write_image

    kernel, preset_mode = load_kernel(args.kernel, size=args.kernel_size)
    mode = args.mode or preset_mode or "direct"
    device = _device(args.device)
    for path in _input_paths(args.inputs):
        image = read_image(path, torch.float64).to(device)
        if min(image.shape[-2:]) < args.scale:
            raise UsageError(f"{path}: image of {tuple(image.shape[-2:])} is smaller than the scale {args.scale}")
        lr = degrade(image, kernel.to(device), args.scale, mode=mode, noise_sigma=args.noise,
                     backend=args.backend)
        out = _output_path(args.output, path, f"_x{args.scale}")
        write_image(out, lr)
        print(f"{path} -> {out} ({lr.shape[-2]}x{lr.shape[-1]})")


def cmd_info(args) -> None:
    from . import __version__
    from .dispatch import backends

    report = {
        "mzsr_fast": __version__,
        "torch": torch.__version__,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "threads": torch.get_num_threads(),
        "backends": backends(),
    }
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mzsr-fast", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    degrade = commands.add_parser("degrade", help="blur and downsample images (make LR inputs)")
    degrade.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files or folders; 'example' is the bundled Set5 butterfly")
    degrade.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    degrade.add_argument("--scale", type=int, default=2)
    degrade.add_argument("--kernel", default="g_d_2.0",
                         help="preset (g_d_0.2, g_d_2.0, g_d_ani, g_b_1.3), 'theta,lambda1,lambda2' or .npy/.mat")
    degrade.add_argument("--kernel-size", type=int, default=21, help="size of a 'theta,l1,l2' kernel")
    degrade.add_argument("--mode", choices=("direct", "bicubic"), help="default: the preset's, else direct")
    degrade.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sigma on the 0..1 scale")
    degrade.add_argument("--device")
    degrade.add_argument("--backend", choices=("cpu", "cuda", "triton", "torch"))
    degrade.set_defaults(run=cmd_degrade)

    info = commands.add_parser("info", help="version, devices and available backends")
    info.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed the usage error
        return int(exit_.code or 0)
    try:
        args.run(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as error:
        if args.debug:
            raise
        print(f"mzsr-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mzsr-fast {args.command}: interrupted", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001  (one clear line, not a traceback)
        if args.debug:
            raise
        print(f"mzsr-fast {args.command}: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
