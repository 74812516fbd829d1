"""The mzsr-fast command (also `python -m mzsr_fast`).

Exit codes: 0 success, 2 bad usage or bad input, 1 failure, 130 interrupted
(Ctrl-C). Errors are one line on stderr; --debug shows the traceback. An input
image that cannot be read is reported (one line each) and skipped; the others
still run, and the exit code is 2. Nothing here imports torch until a command
runs, so --help and usage errors answer at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from importlib import resources

from ._files import check_writable_folder
from .catalogue import ADAPT_LOSSES, parse_multiples
from .train.cli import register_train_commands

EXAMPLES = {"example": "butterfly_hr.png", "example-lr": "butterfly_lr_g_d_2.0.png"}


class UsageError(ValueError):
    """Bad arguments or input: exit code 2."""


def example_path(name: str = "example") -> str:
    """Path of a bundled example image: "example" (HR butterfly from Set5) or
    "example-lr" (its x2 g_d_2.0 degradation from the reference repository)."""
    return str(resources.files("mzsr_fast") / "data" / EXAMPLES[name])


def _report(args, message: str) -> None:
    """One error line on stderr, as main prints them."""
    print(f"mzsr-fast {args.command}: error: {message}", file=sys.stderr)


class ImageError(Exception):
    """An input image that adaptation cannot take (its message names the file)."""


def _skip(args, message: str) -> None:
    """Report an input that cannot be read; the command goes on without it and exits 2."""
    _report(args, message)
    args.failed = True


def _input_paths(args) -> list[str]:
    """The images named by args.inputs (files, folders: their images, and the
    example names), each file once, every one opened and its header checked
    before any work. One that cannot be read (or an argument that names none)
    is reported on stderr and left out, and args.failed is set (exit code 2)."""
    from .io import IMAGE_EXTENSIONS, check_image

    seen, readable = set(), []  # real paths, the readable ones as named
    for item in args.inputs:
        if item in EXAMPLES:
            found = [example_path(item)]
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                _skip(args, f"{item}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        elif os.path.exists(item):
            found = [item]
        else:
            _skip(args, f"{item}: no such file or folder")
            found = []
        for path in found:
            if os.path.realpath(path) in seen:
                continue
            seen.add(os.path.realpath(path))
            try:
                check_image(path)
            except (ValueError, OSError) as error:
                _skip(args, str(error))
            else:
                readable.append(path)
    return readable


def _read_input(args, path: str, dtype=None):
    """read_image(path), or None after reporting it (_skip) when the file is
    damaged past the header that _input_paths checked."""
    from .io import read_image

    try:
        return read_image(path) if dtype is None else read_image(path, dtype)
    except (ValueError, OSError) as error:
        _skip(args, str(error))
        return None


def _device(name: str | None) -> torch.device:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: not a device name: {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: CUDA was asked for but no CUDA device is available")
    return device


# Folders _output_folder made during the running command, deepest first:
# main removes those left empty when the command fails.
_MADE_FOLDERS: list[str] = []


def _output_folder(path: str) -> str:
    """The -o folder, checked writable (a trial file) before any work, and
    made with its parents when missing; UsageError, with nothing made, for an
    existing file or a folder that cannot be made or written to."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"-o: {path} is an existing file; expected an output folder")
    missing, parent = [], os.path.abspath(path)
    while not os.path.isdir(parent):
        if os.path.exists(parent):
            raise UsageError(f"-o: cannot make the output folder {path} ({parent} is a file)")
        missing.append(parent)
        parent = os.path.dirname(parent)
    made = []
    try:
        for folder in reversed(missing):
            os.mkdir(folder)
            made.insert(0, folder)
        check_writable_folder(path)
    except OSError as error:
        _remove_empty(made)
        what = "make the output folder" if missing else "write to the output folder"
        raise UsageError(f"-o: cannot {what} {path} ({error.strerror or error})") from None
    _MADE_FOLDERS[:0] = made
    return path


def _remove_empty(folders: list[str]) -> None:
    """rmdir each folder (deepest first) that is empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _check_outputs(jobs: list[tuple[str, str]], force: bool) -> None:
    """Refuse (input, output file) jobs before any work: two inputs written to
    one file, an output file name taken by a folder, or (without force) an
    existing output file."""
    writers: dict[str, str] = {}
    for source, out in jobs:
        if out in writers and writers[out] != source:
            raise UsageError(f"{writers[out]} and {source} would both be written to {out}; "
                             f"expected inputs with different file names")
        if os.path.isdir(out):
            raise UsageError(f"{out}: is a folder; cannot write the output of {source} there")
        writers[out] = source
    existing = [out for out in writers if os.path.exists(out)]
    if existing and not force:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise UsageError(f"{existing[0]}{more} exists (use --force to overwrite)")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


class _Progress:
    """on_step / on_tile callback for adapt: a line on stderr once the work on
    an image has run PROGRESS_EVERY seconds without one, so only long work
    shows; each line gives the phase's estimated time left."""

    def __init__(self):
        self.key, self.start, self.last = None, 0.0, 0.0

    def __call__(self, label: str, done: int, total: int, what: str = "step") -> None:
        now = time.perf_counter()
        if (label, what) != self.key:  # a new image, n or phase: its clock starts at its first unit
            self.key, self.start, self.last = (label, what), now, now
        elif now - self.last >= PROGRESS_EVERY and done < total:
            left = (now - self.start) / max(done - 1, 1) * (total - done)
            print(f"  {label}: {what} {done}/{total}, about {_duration(left)} left", file=sys.stderr, flush=True)
            self.last = now


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


# Seconds of work on one image before its adaptation steps are shown.
PROGRESS_EVERY = 5.0


def cmd_degrade(args) -> None:
    import torch

    from ._checks import size_text
    from .degradation import check_noise_sigma, degrade, load_kernel
    from .io import write_like

    try:
        check_noise_sigma(args.noise, "--noise")
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.kernel_size < 1 or args.kernel_size % 2 == 0:
        raise UsageError(f"--kernel-size: expected an odd positive integer, got {args.kernel_size}")
    kernel, preset_mode = load_kernel(args.kernel, size=args.kernel_size)
    mode = args.mode or preset_mode or "direct"
    device = _device(args.device)
    paths = _input_paths(args)
    if not paths:
        return
    out_dir = _output_folder(args.output)
    jobs = [(path, os.path.join(out_dir, f"{_stem(path)}_x{args.scale}.png")) for path in paths]
    _check_outputs(jobs, args.force)
    for path, out in jobs:
        image = _read_input(args, path, torch.float64)
        if image is None:
            continue
        image = image.to(device)
        if min(image.shape[-2:]) < args.scale:
            raise UsageError(f"{path}: image of {size_text(image.shape)} is smaller than the scale {args.scale}")
        lr = degrade(image, kernel.to(device), args.scale, mode=mode, noise_sigma=args.noise,
                     backend=args.backend)
        write_like(out, lr, path)
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
    """--steps N,N,...: each number of steps once, in the order given."""
    steps = list(dict.fromkeys(_int_list(text, "--steps")))
    if any(n < 0 for n in steps):
        raise UsageError(f"--steps: expected integers >= 0, got {text!r}")
    return steps


def _adapt_pixels(text: str) -> int:
    """--adapt-pixels: 'all' (0: whole images) or a number of pixels."""
    if text == "all":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'all', got {text!r}") from None


def _multiples(text: str) -> tuple[float, ...]:
    """--step-search M,M,...: positive multiples of the step."""
    try:
        return parse_multiples(text, "", allow_empty=False)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(": ")) from None


def _adapt_options(args) -> dict:
    """adapt's adapt_pixels, step_search and adapt_loss from --adapt-pixels,
    --step-search and --adapt-loss (nothing when not given: the defaults)."""
    given = {"adapt_pixels": args.adapt_pixels, "step_search": args.step_search, "adapt_loss": args.adapt_loss}
    return {name: value for name, value in given.items() if value is not None}


# The command-line options of adapt's arguments, for its errors.
_OPTIONS = {"adapt_pixels": "--adapt-pixels", "seed": "--seed", "tile": "--tile"}


def _check_adapt_options(args, names: tuple[str, ...]) -> None:
    """adapt's checks of the options `names` (keys of _OPTIONS), before any work, in the options' names."""
    from .adapt import check_options

    try:
        check_options(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})
    except ValueError as error:
        name, _, reason = str(error).partition(": ")
        raise UsageError(f"{_OPTIONS.get(name, name)}: {reason}") from None


def cmd_sr(args) -> None:
    import torch

    from ._checks import size_text
    from .adapt import UnadaptedModelWarning, adapt
    from .blind import estimate_kernel, joint_estimate
    from .degradation import PRESETS, load_kernel
    from .io import write_like
    from .pretrained import check_scale, resolve_model, unadapted_warning

    steps = _steps_list(args.steps)
    device = _device(args.device)
    _check_adapt_options(args, ("adapt_pixels", "seed", "tile"))
    if args.cuda_graph and device.type != "cuda":
        raise UsageError(f"--cuda-graph: needs a CUDA device, got {device}")
    preset = PRESETS.get(args.kernel)
    # the model of each n: with no --model, the kind's one-step model for n = 1 where it is shipped
    models = {n: resolve_model(args.model, preset.mode if preset else None, args.scale, device=device, steps=n)
              for n in steps}
    for net, info in models.values():  # before any estimate: the model cannot do this scale
        try:
            check_scale(args.model, info, args.scale, "--scale")
        except ValueError as error:
            raise UsageError(str(error)) from None
    mode = models[steps[0]][1].mode  # a kind's models share their subsampling mode
    paths = _input_paths(args)
    if not paths:
        return
    out_dir = _output_folder(args.output)

    def out_path(path: str, n: int) -> str:  # an input made by `degrade` keeps one _x{scale}
        return os.path.join(out_dir, f"{_stem(path).removesuffix(f'_x{args.scale}')}_x{args.scale}_mzsr{n}.png")

    _check_outputs([(path, out_path(path, n)) for path in paths for n in steps], args.force)
    unadapted = unadapted_warning(models[0][1]) if 0 in steps else None
    if unadapted:  # once for the run, not once per image
        warnings.warn(unadapted, UnadaptedModelWarning, stacklevel=1)
    progress = _Progress()

    def label_of(names: list[str]) -> str:  # how messages name the images from the files `names`
        return names[0] if len(names) == 1 else f"{len(names)} images"

    def named(message: str, names: list[str]) -> str:
        """The message of the images from the files `names` naming the file:
        "lr[i]: ..." / "lr: ..." -> "FILE: ...", anything else prefixed."""
        head, _, rest = message.partition(": ")
        if head == "lr" and len(names) == 1:
            return f"{names[0]}: {rest}"
        if head.startswith("lr[") and head.endswith("]") and head[3:-1].isdigit() and int(head[3:-1]) < len(names):
            return f"{names[int(head[3:-1])]}: {rest}"
        return f"{label_of(names)}: {message}"

    def super_resolve(lr, kernel, n: int, names: list[str], **options):
        """adapt's SR of the images from the files `names`, and the seconds of
        its two phases: "adaptation" (the son and the steps) and "inference";
        ImageError, naming the file, for an image it cannot take."""
        label = label_of(names)
        start = adapted = time.perf_counter()

        def on_step(done, total):
            nonlocal adapted
            adapted = time.perf_counter()
            progress(f"{label} MZSR({n})", done, total)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnadaptedModelWarning)  # said once, above
                sr = adapt(lr, kernel, args.scale, steps=n, model=models[n][0],
                           precision=args.precision, backprojection=args.backprojection, tile=args.tile,
                           backend=args.backend, cuda_graph=args.cuda_graph, seed=args.seed, on_step=on_step,
                           on_tile=lambda done, total: progress(f"{label} MZSR({n})", done, total, "tile"),
                           **_adapt_options(args), **options)
        except ValueError as error:  # name the image
            raise ImageError(named(str(error), names)) from None
        return sr, {"adaptation": adapted - start, "inference": time.perf_counter() - adapted}

    def phases(seconds: dict) -> str:
        return f"{sum(seconds.values()):.2f} s: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())

    def estimated(lr, label: str, names: list[str], shared: bool = False) -> torch.Tensor:
        """The kernel of lr (an image, or a list whose one kernel is joined:
        shared) estimated for the model's subsampling mode, said with its
        time; its warnings name the files."""
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimate = estimate_kernel(lr, args.scale, mode=mode)
        for warning in caught:
            warnings.warn(named(str(warning.message), names), warning.category, stacklevel=1)
        estimate = joint_estimate(estimate) if shared else estimate
        print(f"{label}: estimated {'shared ' if shared else ''}kernel {estimate} in "
              f"{time.perf_counter() - start:.2f} s")
        return estimate.kernel

    blind = args.kernel == "auto" and any(steps)  # MZSR(0) alone reads no kernel: none is estimated for it
    if args.share_adaptation:  # one kernel and one adaptation for all of them, then each image's inference
        read = [(path, lr.to(device)) for path in paths if (lr := _read_input(args, path)) is not None]
        if not read:
            return
        names = [path for path, _ in read]
        if blind:
            kernel = estimated([lr for _, lr in read], label_of(names), names, shared=True)
            size = kernel.shape[-1]
        else:  # a named kernel, or "auto" for MZSR(0) alone, which reads none
            kernel = args.kernel
            size = 0 if kernel == "auto" else load_kernel(kernel)[0].shape[-1]
        for path, lr in read:  # an image smaller than the kernel is left out, the others share the adaptation
            if min(lr.shape[-2:]) < size:
                _skip(args, f"{path}: image of {size_text(lr.shape)} is smaller than the {size}x{size} kernel")
        read = [(path, lr) for path, lr in read if min(lr.shape[-2:]) >= size]
        if not read:
            return
        names = [path for path, _ in read]
        for n in steps:
            try:
                srs, seconds = super_resolve([lr for _, lr in read], kernel, n, names, share=True)
            except ImageError as error:  # one adaptation for all: an image it cannot take stops it
                raise UsageError(str(error)) from None
            start = time.perf_counter()
            for index, ((path, _), sr) in enumerate(zip(read, srs), 1):
                write_like(out_path(path, n), sr, path)
                print(f"[{index}/{len(read)}] {path} -> {out_path(path, n)} ({size_text(sr.shape)})")
            seconds["writing"] = time.perf_counter() - start
            print(f"{label_of(names)} MZSR({n}): {phases(seconds)}")
        return
    for index, path in enumerate(paths, 1):
        lr = _read_input(args, path)
        if lr is None:
            continue
        lr = lr.to(device)
        kernel = estimated(lr, f"[{index}/{len(paths)}] {path}", [path]) if blind else args.kernel
        for n in steps:
            try:
                sr, seconds = super_resolve(lr, kernel, n, [path])
            except ImageError as error:  # e.g. smaller than the kernel: reported, the other images still run
                _skip(args, str(error))
                break
            out = out_path(path, n)
            start = time.perf_counter()
            write_like(out, sr, path)
            seconds["writing"] = time.perf_counter() - start
            print(f"[{index}/{len(paths)}] {path} -> {out} ({size_text(sr.shape)}, {phases(seconds)})")


def cmd_estimate_kernel(args) -> None:
    from .blind import estimate_kernel

    results = []
    for path in _input_paths(args):
        lr = _read_input(args, path)
        if lr is None:
            continue
        estimate = estimate_kernel(lr, args.scale, mode=args.mode, method=args.method)
        results.append({"image": path, **estimate.as_dict()})
        if not args.json:
            print(f"{path}: {estimate}")
    if args.json:
        print(json.dumps(results, indent=2))


def cmd_eval(args) -> None:
    from . import _checks
    from .evaluation import evaluate, format_markdown, write_report

    steps = _steps_list(args.steps)
    device = _device(args.device)
    _check_adapt_options(args, ("adapt_pixels",))
    if args.output:
        _check_outputs([(args.gt, os.path.join(_output_folder(args.output), f"results.{ext}"))
                        for ext in ("md", "csv", "json")], args.force)
    progress = _Progress()

    def on_image(score):
        kernel = f", kernel {score.kernel}" if score.kernel else ""
        print(f"  {score.image} {score.method}({score.steps}): {score.psnr:.2f} dB / {score.ssim:.4f} "
              f"({score.seconds:.2f} s{kernel})", file=sys.stderr)

    if args.kernel == "random" and args.lr:
        raise UsageError("--kernel random: degrades the GT images itself; drop --lr")
    if args.seed is not None and args.kernel != "random":
        raise UsageError("--seed: only used with --kernel random")
    if args.seed is not None:
        try:
            _checks.seed(args.seed, "--seed")
        except ValueError as error:
            raise UsageError(str(error)) from None
    if args.estimate_kernel and args.method != "mzsr":
        raise UsageError(f"--estimate-kernel: only with --method mzsr, got {args.method}")
    scores = evaluate(args.gt, args.kernel, args.scale, steps, method=args.method, lr_dir=args.lr,
                      model=args.model, device=device, on_image=on_image, precision=args.precision,
                      on_step=lambda image, n, done, total: progress(f"{image} MZSR({n})", done, total),
                      seed=args.seed, estimate_kernel=args.estimate_kernel,
                      on_bad_input=lambda error: _skip(args, str(error)), **_adapt_options(args))
    if not scores:  # every image was unreadable (and reported)
        return
    kernel = f"random (seed {args.seed or 0})" if args.kernel == "random" else args.kernel
    title = f"{args.method} x{args.scale}, kernel {kernel}, GT {args.gt}" + (f", LR {args.lr}" if args.lr else "")
    title += ", with estimated kernels (mzsr-est)" if args.estimate_kernel else ""
    print(format_markdown(scores, title))
    if args.output:
        write_report(args.output, scores, title)


def cmd_import_tf(args) -> None:
    from .pretrained import format_schedule, import_tf_checkpoint, parse_schedule

    if os.path.isdir(args.output):
        raise UsageError(f"-o: {args.output} is a folder; expected a file name")
    if os.path.exists(args.output) and not args.force:
        raise UsageError(f"-o: {args.output} exists (use --force to overwrite)")
    folder = os.path.dirname(os.path.abspath(args.output))
    try:
        check_writable_folder(folder)
    except OSError as error:
        raise UsageError(f"-o: cannot write to the folder {folder} ({error.strerror or error})") from None
    schedule = parse_schedule(args.schedule, "--schedule") if args.schedule is not None else None
    info = import_tf_checkpoint(args.prefix, args.output, mode=args.mode, scales=_int_list(args.scales, "--scales"),
                                schedule=schedule)
    print(f"{args.prefix} -> {args.output} ({info.mode}, scales {','.join(map(str, info.scales))}, "
          f"schedule {format_schedule(info.schedule)})")


def _model_summary(info) -> str:
    """One line on a shipped model: mode, scales, training iterations, schedule, adaptation loss and search."""
    from .pretrained import format_schedule, is_per_tensor

    rows = len(info.schedule)
    schedule = f"per-tensor table of {rows} step{'s' if rows > 1 else ''}" if is_per_tensor(info.schedule) else \
        format_schedule(info.schedule)
    search = f"step search {','.join(f'{m:g}' for m in info.step_search)}" if info.step_search else "no step search"
    return (f"shipped: {info.mode} x{','.join(map(str, info.scales))}, "
            f"{info.notes.get('step', 'unknown')} meta-training iterations, schedule {schedule}, "
            f"{info.adapt_loss} adaptation loss, {search}")


def cmd_info(args) -> None:
    import torch

    from . import __version__
    from .dispatch import backends, cpu_only_ops
    from .pretrained import bundled_models, load_model

    report = {
        "mzsr_fast": __version__,
        "torch": torch.__version__,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "threads": torch.get_num_threads(),
        "backends": backends(),
        "cpu_only_ops": cpu_only_ops(),
        "bundled_models": {name: _model_summary(load_model(name)[1]) if ok else "not trained yet"
                           for name, ok in bundled_models().items()},
    }
    print(json.dumps(report, indent=2))


def _force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", "--overwrite", dest="force", action="store_true",
                        help=f"overwrite {what} (refused without it)")


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
    _force(degrade, "existing output files")
    degrade.set_defaults(run=cmd_degrade)

    kernel_help = "preset (g_d_0.2, g_d_2.0, g_d_ani, g_b_1.3), 'theta,lambda1,lambda2' or a .npy/.mat file"
    sr = commands.add_parser("sr", help="super-resolve images with MZSR(n)")
    sr.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="LR image files or folders; 'example-lr' is the bundled x2 g_d_2.0 butterfly")
    sr.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    sr.add_argument("--scale", type=int, default=2)
    sr.add_argument("--kernel", default="auto",
                    help=kernel_help + ", or 'auto' (default): estimate each image's kernel (x2, x3, x4) and print it "
                         "(none for --steps 0 alone, which reads no kernel)")
    sr.add_argument("--steps", default="10",
                    help="adaptation steps n of MZSR(n) (default 10: the shipped x2 models are meta-trained for "
                         "adaptation and poor without it); comma-separated for one output per n, e.g. 0,1,10")
    model_help = ("bundled model name or .safetensors path (default: the shipped model for the kernel's "
                  "subsampling mode and the scale, for --steps 1 its one-step model where one is shipped)")
    sr.add_argument("--model", help=model_help)
    precision_help = ("fp32 (default): float32, the adaptation steps' forward and input-gradient convolutions "
                      "in the original's arithmetic; tf32: the fast float32 mode (TF32 convolutions on CUDA, "
                      "Winograd for every convolution of the CPU's adaptation steps: a step in about 0.85x the "
                      "time, outputs up to about 1e-4 from fp32's); bf16: bfloat16")
    sr.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32", help=precision_help)
    sr.add_argument("--tile", type=int, help="final inference on tiles of this many output pixels (default: "
                                             "1024; bounds its memory, same result)")
    budget_help = ("pixel budget of an adaptation step: an LR image of more pixels is adapted on windows of at "
                   "most N pixels in all, redrawn every step (see the README); 'all' adapts on the whole image")
    sr.add_argument("--adapt-pixels", type=_adapt_pixels, metavar="N|all", help=budget_help + " (default 32768)")
    sr.add_argument("--seed", type=int, default=0, help="seed of the budget's window draw (default 0)")
    search_help = ("after each adaptation step, try these multiples of it (default 0.5,1,2) and keep the one "
                   "whose loss on the image's own son -> LR pair is lowest: one forward pass per multiple over "
                   "the central quarter of the step's input (default: the model's; see `mzsr-fast info` and the "
                   "README)")
    no_search_help = "the scheduled step alone, also for a model that searches by default (the lowest latency)"
    sr.add_argument("--step-search", type=_multiples, nargs="?", const=True, metavar="M,M,...", help=search_help)
    sr.add_argument("--no-step-search", dest="step_search", action="store_const", const=False, help=no_search_help)
    loss_help = ("the loss the adaptation steps descend (default: the model's; l1, the paper's, for every shipped "
                 "model not meta-trained with another; see the README)")
    sr.add_argument("--adapt-loss", choices=ADAPT_LOSSES, help=loss_help)
    sr.add_argument("--share-adaptation", action="store_true",
                    help="one kernel (estimated from all of them) and one adaptation for all the inputs (frames of "
                         "one video, a burst, photos of one camera), then each image's own inference")
    sr.add_argument("--backprojection", action="store_true", help="4 iterations of back-projection")
    sr.add_argument("--device")
    sr.add_argument("--backend", choices=("cpu", "cuda", "triton", "torch"))
    sr.add_argument("--cuda-graph", action="store_true",
                    help="replay each adaptation step as one captured CUDA graph (CUDA devices only)")
    _force(sr, "existing output files")
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
    evaluate.add_argument("--model", help=model_help)
    evaluate.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32", help=precision_help)
    evaluate.add_argument("--adapt-pixels", type=_adapt_pixels, default=0, metavar="N|all",
                          help=budget_help + " (default all: the paper's protocol)")
    evaluate.add_argument("--step-search", type=_multiples, nargs="?", const=True, metavar="M,M,...",
                          help=search_help)
    evaluate.add_argument("--no-step-search", dest="step_search", action="store_const", const=False,
                          help=no_search_help + "; the paper's protocol")
    evaluate.add_argument("--adapt-loss", choices=ADAPT_LOSSES, help=loss_help)
    evaluate.add_argument("-o", "--output", metavar="OUTDIR", help="write results.md/.csv/.json here")
    evaluate.add_argument("--device")
    _force(evaluate, "existing results files")
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
    _force(import_tf, "OUT")
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
    args.failed = False  # set by a command that skipped an input it could not read
    code = 1
    try:
        args.run(args)
        code = 2 if args.failed else 0
    except (UsageError, ValueError, TypeError, FileNotFoundError) as error:
        if args.debug:
            raise
        _report(args, str(error))
        code = 2
    except KeyboardInterrupt:
        print(f"mzsr-fast {args.command}: interrupted", file=sys.stderr)
        code = 130  # 128 + SIGINT, the shell's convention
    except Exception as error:  # noqa: BLE001  (one clear line, not a traceback)
        if args.debug:
            raise
        print(f"mzsr-fast {args.command}: failed: {type(error).__name__}: {error}", file=sys.stderr)
    finally:
        warnings.formatwarning = format_warning
        if code != 0:  # a failed command leaves no empty output folder it made
            _remove_empty(_MADE_FOLDERS)
        _MADE_FOLDERS.clear()
    return code


if __name__ == "__main__":
    sys.exit(main())
