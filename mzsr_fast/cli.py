"""The mzsr-fast command (also `python -m mzsr_fast`).

Exit codes: 0 success, 2 bad usage or bad input, 1 failure. Errors are one
line on stderr; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from importlib import resources

import torch

from .train.cli import register_train_commands

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


def _output_folder(path: str) -> str:
    """The -o folder, made now, before any work; UsageError for an existing
    file or a folder that cannot be made."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"-o: {path} is an existing file; expected an output folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UsageError(f"-o: cannot make the output folder {path} ({error.strerror or error})") from None
    return path


def _check_outputs(jobs: list[tuple[str, str]]) -> None:
    """Refuse (input, output file) jobs before any work: two inputs written to
    one file, or an output file name taken by a folder."""
    writers: dict[str, str] = {}
    for source, out in jobs:
        if out in writers and writers[out] != source:
            raise UsageError(f"{writers[out]} and {source} would both be written to {out}; "
                             f"expected inputs with different file names")
        if os.path.isdir(out):
            raise UsageError(f"{out}: is a folder; cannot write the output of {source} there")
        writers[out] = source


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


class _Progress:
    """on_step callback for adapt: a line on stderr per step once the work on
    an image has run PROGRESS_EVERY seconds without one, so only long work shows."""

    def __init__(self):
        self.key, self.last = None, 0.0

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if label != self.key:  # a new image or n: its clock starts at its first step
            self.key, self.last = label, now
        elif now - self.last >= PROGRESS_EVERY and done < total:
            print(f"  {label}: step {done}/{total}", file=sys.stderr, flush=True)
            self.last = now


# Seconds of work on one image before its adaptation steps are shown.
PROGRESS_EVERY = 5.0


def cmd_degrade(args) -> None:
    from ._checks import size_text
    from .degradation import degrade, load_kernel
    from .io import bit_depth, read_image, write_image

    kernel, preset_mode = load_kernel(args.kernel, size=args.kernel_size)
    mode = args.mode or preset_mode or "direct"
    device = _device(args.device)
    paths = _input_paths(args.inputs)
    out_dir = _output_folder(args.output)
    jobs = [(path, os.path.join(out_dir, f"{_stem(path)}_x{args.scale}.png")) for path in paths]
    _check_outputs(jobs)
    for path, out in jobs:
        image = read_image(path, torch.float64).to(device)
        if min(image.shape[-2:]) < args.scale:
            raise UsageError(f"{path}: image of {size_text(image.shape)} is smaller than the scale {args.scale}")
        lr = degrade(image, kernel.to(device), args.scale, mode=mode, noise_sigma=args.noise,
                     backend=args.backend)
        write_image(out, lr, bits=bit_depth(path))
        print(f"{path} -> {out} ({size_text(lr.shape)})")


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what}: expected integers separated by commas, got {text!r}") from None
    if not values:
        raise UsageError(f"{what}: expected at least one integer, got {text!r}")
    return values


def _steps_list(text: str) -> list[int]:
    steps = list(_int_list(text, "--steps"))
    if any(n < 0 for n in steps):
        raise UsageError(f"--steps: expected integers >= 0, got {text!r}")
    return steps


def cmd_sr(args) -> None:
    from ._checks import size_text
    from .adapt import adapt
    from .blind import estimate_kernel
    from .degradation import PRESETS
    from .io import bit_depth, read_image, write_image
    from .pretrained import resolve_model

    steps = _steps_list(args.steps)
    device = _device(args.device)
    preset = PRESETS.get(args.kernel)
    net, info = resolve_model(args.model, preset.mode if preset else None, args.scale, device=device)
    if info.scales and args.scale not in info.scales:  # before any estimate: the model cannot do this scale at all
        raise UsageError(f"scale: the model {info.name!r} was trained for scales {info.scales}, got {args.scale}")
    paths = _input_paths(args.inputs)
    out_dir = _output_folder(args.output)

    def out_path(path: str, n: int) -> str:  # an input made by `degrade` keeps one _x{scale}
        return os.path.join(out_dir, f"{_stem(path).removesuffix(f'_x{args.scale}')}_x{args.scale}_mzsr{n}.png")

    _check_outputs([(path, out_path(path, n)) for path in paths for n in steps])
    progress = _Progress()
    for index, path in enumerate(paths, 1):
        lr = read_image(path).to(device)
        kernel = args.kernel
        if kernel == "auto":  # estimated for the model's subsampling mode, and said so
            estimate = estimate_kernel(lr, args.scale, mode=info.mode)
            print(f"[{index}/{len(paths)}] {path}: estimated kernel {estimate}")
            kernel = estimate.kernel
        for n in steps:
            start = time.perf_counter()
            try:
                sr = adapt(lr, kernel, args.scale, steps=n, model=net,
                           precision=args.precision, backprojection=args.backprojection, tile=args.tile,
                           backend=args.backend, cuda_graph=args.cuda_graph,
                           on_step=lambda done, total, n=n: progress(f"{path} MZSR({n})", done, total))
            except ValueError as error:  # name the image
                raise UsageError(f"{path}: {str(error).removeprefix('lr: ')}") from None
            seconds = time.perf_counter() - start
            out = out_path(path, n)
            write_image(out, sr, bits=bit_depth(path))
            print(f"[{index}/{len(paths)}] {path} -> {out} ({size_text(sr.shape)}, {seconds:.2f} s)")


def cmd_estimate_kernel(args) -> None:
    from .blind import estimate_kernel
    from .io import read_image

    results = []
    for path in _input_paths(args.inputs):
        estimate = estimate_kernel(read_image(path), args.scale, mode=args.mode, method=args.method)
        results.append({"image": path, **estimate.as_dict()})
        if not args.json:
            print(f"{path}: {estimate}")
    if args.json:
        print(json.dumps(results, indent=2))


def cmd_eval(args) -> None:
    from .evaluation import evaluate, format_markdown, write_report

    steps = _steps_list(args.steps)
    device = _device(args.device)
    if args.output:
        _check_outputs([(args.gt, os.path.join(_output_folder(args.output), f"results.{ext}"))
                        for ext in ("md", "csv", "json")])
    progress = _Progress()

    def on_image(score):
        kernel = f", kernel {score.kernel}" if score.kernel else ""
        print(f"  {score.image} {score.method}({score.steps}): {score.psnr:.2f} dB / {score.ssim:.4f} "
              f"({score.seconds:.2f} s{kernel})", file=sys.stderr)

    if args.kernel == "random" and args.lr:
        raise UsageError("--kernel random: degrades the GT images itself; drop --lr")
    if args.seed is not None and args.kernel != "random":
        raise UsageError("--seed: only used with --kernel random")
    if args.estimate_kernel and args.method != "mzsr":
        raise UsageError(f"--estimate-kernel: only with --method mzsr, got {args.method}")
    scores = evaluate(args.gt, args.kernel, args.scale, steps, method=args.method, lr_dir=args.lr,
                      model=args.model, device=device, on_image=on_image, precision=args.precision,
                      on_step=lambda image, n, done, total: progress(f"{image} MZSR({n})", done, total),
                      seed=args.seed, estimate_kernel=args.estimate_kernel)
    kernel = f"random (seed {args.seed or 0})" if args.kernel == "random" else args.kernel
    title = f"{args.method} x{args.scale}, kernel {kernel}, GT {args.gt}" + (f", LR {args.lr}" if args.lr else "")
    title += ", with estimated kernels (mzsr-est)" if args.estimate_kernel else ""
    print(format_markdown(scores, title))
    if args.output:
        write_report(args.output, scores, title)


def cmd_import_tf(args) -> None:
    from .pretrained import format_schedule, import_tf_checkpoint, parse_schedule

    if os.path.exists(args.output) and not args.force:
        raise UsageError(f"-o: {args.output} exists (use --force to overwrite)")
    schedule = parse_schedule(args.schedule, "--schedule") if args.schedule else None
    info = import_tf_checkpoint(args.prefix, args.output, mode=args.mode, scales=_int_list(args.scales, "--scales"),
                                schedule=schedule)
    print(f"{args.prefix} -> {args.output} ({info.mode}, scales {','.join(map(str, info.scales))}, "
          f"schedule {format_schedule(info.schedule)})")


def _model_summary(info) -> str:
    """One line on a shipped model: mode, scales, training iterations, schedule."""
    from .pretrained import format_schedule, is_per_tensor

    schedule = f"per-tensor table of {len(info.schedule)} steps" if is_per_tensor(info.schedule) else \
        format_schedule(info.schedule)
    return (f"shipped: {info.mode} x{','.join(map(str, info.scales))}, "
            f"{info.notes.get('step', 'unknown')} meta-training iterations, schedule {schedule}")


def cmd_info(args) -> None:
    from . import __version__
    from .dispatch import backends
    from .pretrained import bundled_models, load_model

    report = {
        "mzsr_fast": __version__,
        "torch": torch.__version__,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "threads": torch.get_num_threads(),
        "backends": backends(),
        "bundled_models": {name: _model_summary(load_model(name)[1]) if ok else "not trained yet"
                           for name, ok in bundled_models().items()},
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

    kernel_help = "preset (g_d_0.2, g_d_2.0, g_d_ani, g_b_1.3), 'theta,lambda1,lambda2' or a .npy/.mat file"
    sr = commands.add_parser("sr", help="super-resolve images with MZSR(n)")
    sr.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="LR image files or folders; 'example-lr' is the bundled x2 g_d_2.0 butterfly")
    sr.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    sr.add_argument("--scale", type=int, default=2)
    sr.add_argument("--kernel", default="auto",
                    help=kernel_help + ", or 'auto' (default): estimate each image's kernel (x2, x3, x4) and print it")
    sr.add_argument("--steps", default="10",
                    help="adaptation steps n of MZSR(n) (default 10: the shipped x2 models are meta-trained for "
                         "adaptation and poor without it); comma-separated for one output per n, e.g. 0,1,10")
    sr.add_argument("--model", help="bundled model name or .safetensors path (default: the shipped model for "
                                    "the kernel's subsampling mode and the scale; direct_x2 when none fits)")
    sr.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    sr.add_argument("--tile", type=int, help="final inference on tiles of this many output pixels (default: "
                                             "1024; bounds its memory, same result)")
    sr.add_argument("--backprojection", action="store_true", help="4 iterations of back-projection")
    sr.add_argument("--device")
    sr.add_argument("--backend", choices=("cpu", "cuda", "triton", "torch"))
    sr.add_argument("--cuda-graph", action="store_true",
                    help="replay each adaptation step as one captured CUDA graph (CUDA devices only)")
    sr.set_defaults(run=cmd_sr)

    evaluate = commands.add_parser("eval", help="PSNR/SSIM table as in the paper")
    evaluate.add_argument("--gt", required=True, metavar="DIR", help="ground-truth folder")
    evaluate.add_argument("--lr", metavar="DIR", help="LR folder (default: degrade the GT with --kernel)")
    evaluate.add_argument("--kernel", default="g_d_2.0",
                          help=kernel_help + ", or 'random': each GT image degraded with its own random kernel "
                                             "(direct, any angle; variances 0.2-5 at x2, the meta-training "
                                             "distribution at x3 and x4; see --seed)")
    evaluate.add_argument("--seed", type=int, help="seed of --kernel random (default 0)")
    evaluate.add_argument("--estimate-kernel", action="store_true",
                          help="also adapt with the kernel estimated from each LR image (method mzsr-est) "
                               "and report its kernel L1 error")
    evaluate.add_argument("--scale", type=int, default=2)
    evaluate.add_argument("--steps", default="0,1,10",
                          help="comma-separated n of MZSR(n); for zssr its maximum steps (ZSSR: 3000)")
    evaluate.add_argument("--method", choices=("mzsr", "bicubic", "zssr"), default="mzsr")
    evaluate.add_argument("--model", help="bundled model name or .safetensors path")
    evaluate.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    evaluate.add_argument("-o", "--output", metavar="OUTDIR", help="write results.md/.csv/.json here")
    evaluate.add_argument("--device")
    evaluate.set_defaults(run=cmd_eval)

    estimate = commands.add_parser("estimate-kernel",
                                   help="estimate the blur kernel of x2, x3 or x4 LR images (blind mode)")
    estimate.add_argument("inputs", nargs="+", metavar="IMAGE", help="LR image files or folders, or 'example-lr'")
    estimate.add_argument("--scale", type=int, default=2, help="2, 3 or 4 (x3 and x4: direct subsampling only)")
    estimate.add_argument("--mode", choices=("direct", "bicubic"), default="direct",
                          help="subsampling the images were made with (g_b_* presets: bicubic)")
    estimate.add_argument("--method", choices=("combined", "learned", "crossscale"), default="combined",
                          help="estimator (mzsr_fast.blind; the default was best in benchmarks/results/blind-*.md)")
    estimate.add_argument("--json", action="store_true", help="print a JSON list instead of one line per image")
    estimate.set_defaults(run=cmd_estimate_kernel)

    register_train_commands(commands)

    import_tf = commands.add_parser("import-tf", help="convert a checkpoint of the reference (TensorFlow) "
                                                      "into a model file")
    import_tf.add_argument("prefix", metavar="PREFIX",
                           help="checkpoint prefix (PREFIX.index, PREFIX.data-*), its .index file or its folder")
    import_tf.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")
    import_tf.add_argument("--mode", choices=("direct", "bicubic"), default="direct",
                           help="subsampling the model adapts with (Bicubicx2: bicubic)")
    import_tf.add_argument("--scales", default="2", help="scales the model is for: 2, 4 or 2,3,4 (direct), 2 (bicubic), "
                           "as the reference's released models")
    import_tf.add_argument("--schedule", help="test-time learning rates per step, e.g. 0.02,0.01 (the last "
                                              "repeats; default: the reference's for this kind of model)")
    import_tf.add_argument("--force", action="store_true", help="overwrite OUT")
    import_tf.set_defaults(run=cmd_import_tf)

    info = commands.add_parser("info", help="version, devices and available backends")
    info.set_defaults(run=cmd_info)
    for command in commands.choices.values():  # --debug also after the subcommand
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed the usage error
        return int(exit_.code or 0)
    format_warning = warnings.formatwarning
    if not args.debug:  # one line per warning, without the source line
        warnings.formatwarning = lambda message, *_: f"mzsr-fast {args.command}: warning: {message}\n"
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
    finally:
        warnings.formatwarning = format_warning
    return 0


if __name__ == "__main__":
    sys.exit(main())
