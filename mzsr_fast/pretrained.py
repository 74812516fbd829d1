"""Bundled and saved MZSR models: weights (safetensors) plus what the meta-test
needs to know about them (subsampling mode, scales, learning-rate schedule),
and the catalogue of the paper's four models (mzsr_fast.catalogue)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from importlib import resources

import numpy as np
import torch
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as save_safetensors

from ._files import atomic_write
from .catalogue import BUNDLED, CATALOGUE, ONE_STEP, ModelKind, kind_of, parse_multiples
from .losses import LOSSES
from .model import PARAMETER_NAMES, MZSRNet, state_dict_mismatch

__all__ = ["ModelKind", "CATALOGUE", "BUNDLED", "ModelInfo", "bundled_info", "load_model", "save_model", "bundled_models",
           "default_model", "resolve_model", "mode_mismatch", "load_tf_checkpoint", "import_tf_checkpoint",
           "kind_for", "is_meta_learned", "unadapted_warning", "parse_schedule", "format_schedule", "is_per_tensor", "Schedule"]


# A test-time schedule: one entry per step, the last repeating. Either every
# entry is one rate (for every parameter tensor), or every entry is a tuple of
# rates, one per tensor in model.PARAMETER_NAMES order (a learned MAML++ table).
# A flat tuple of 16 numbers is 16 steps; one per-tensor step is ((16 numbers),).
Schedule = tuple


def is_per_tensor(schedule: Schedule) -> bool:
    """Whether a schedule's entries are per-tensor rows; TypeError for a mix."""
    rows = [isinstance(r, (tuple, list)) for r in schedule]
    if any(rows) and not all(rows):
        raise TypeError(f"schedule: mixes single rates and per-tensor rows: {schedule!r}")
    return bool(schedule) and all(rows)


def parse_schedule(text: str, what: str = "schedule") -> Schedule:
    """A schedule from "r1,r2,..." (one rate per step) or "a1,...,a16;b1,...;"
    (per step, one rate per parameter tensor; every row ends with ";");
    rates in (0, 1) (per-tensor ones in [0, 1)). ValueError naming what."""
    if ";" not in text:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"{what}: expected numbers separated by commas, got {text!r}") from None
        if not values or not all(0 < v < 1 for v in values):
            raise ValueError(f"{what}: expected learning rates in (0, 1), got {text!r}")
        return values
    rows = []
    for row in text.rstrip(";").split(";"):
        try:
            rates = tuple(float(v) for v in row.split(","))
        except ValueError:
            raise ValueError(f"{what}: expected numbers separated by commas, got {row!r}") from None
        if len(rates) != len(PARAMETER_NAMES) or not all(0 <= v < 1 for v in rates):
            raise ValueError(f"{what}: a per-tensor step needs {len(PARAMETER_NAMES)} rates in [0, 1), got {row!r}")
        rows.append(rates)
    return tuple(rows)


def format_schedule(schedule: Schedule) -> str:
    """The text form parse_schedule reads."""
    if not is_per_tensor(schedule):
        return ",".join(repr(float(r)) for r in schedule)
    return "".join(",".join(repr(float(v)) for v in row) + ";" for row in schedule)


@dataclass(frozen=True)
class ModelInfo:
    """What a model was trained for: kind (a CATALOGUE key), subsampling mode,
    scales (empty: not known, any scale accepted), its own test-time
    learning-rate schedule (empty: the kind's reference schedule), the loss
    its adaptation steps descend (mzsr_fast.losses.LOSSES; "l1", the paper's,
    unless it was meta-trained with another) and the multiples of each step
    its adaptation tries by default (step_search, chosen on held-out images;
    empty: the scheduled step alone, the paper's protocol)."""

    name: str
    kind: str = "direct_x2"
    mode: str = "direct"
    scales: tuple[int, ...] = (2,)
    notes: dict = field(default_factory=dict, compare=False)
    own_schedule: Schedule = ()
    adapt_loss: str = "l1"
    step_search: tuple[float, ...] = ()

    @property
    def schedule(self) -> Schedule:
        """Per-step test-time learning rates (see Schedule); the last step repeats."""
        return self.own_schedule or CATALOGUE[self.kind].schedule

    def metadata(self) -> dict[str, str]:
        meta = {**{k: str(v) for k, v in self.notes.items()}, "name": self.name, "kind": self.kind,
                "mode": self.mode, "scales": ",".join(str(s) for s in self.scales)}
        if self.own_schedule:
            meta["schedule"] = format_schedule(self.own_schedule)
        if self.adapt_loss != "l1":
            meta["adapt_loss"] = self.adapt_loss
        if self.step_search:
            meta["step_search"] = ",".join(repr(float(m)) for m in self.step_search)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, fallback_name: str, source: str = "metadata") -> "ModelInfo":
        """The info stored in a model file's metadata; source (the file) is named in errors."""
        meta = dict(meta or {})
        kind = meta.pop("kind", None)
        mode = meta.pop("mode", "direct")
        if mode not in ("direct", "bicubic"):
            raise ValueError(f"{source}: metadata mode={mode!r}: expected 'direct' or 'bicubic'")
        text = meta.pop("scales", "2")
        try:
            scales = tuple(int(s) for s in text.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"{source}: metadata scales={text!r}: expected integers separated by commas") from None
        if any(s < 2 for s in scales):
            raise ValueError(f"{source}: metadata scales={text!r}: expected integers >= 2")
        schedule = parse_schedule(meta.pop("schedule"), f"{source}: metadata schedule") if "schedule" in meta else ()
        adapt_loss = meta.pop("adapt_loss", "l1")
        if adapt_loss not in LOSSES:
            raise ValueError(f"{source}: metadata adapt_loss={adapt_loss!r}: expected one of {LOSSES}")
        step_search = parse_multiples(meta.pop("step_search", ""), f"{source}: metadata step_search")
        if kind not in CATALOGUE:  # a file without (or with an unknown) kind: the one its mode and scales make
            kind = kind_for(mode, scales)
        return cls(name=meta.pop("name", fallback_name), kind=kind, mode=mode, scales=scales, notes=meta,
                   own_schedule=schedule, adapt_loss=adapt_loss, step_search=step_search)



def as_bundled(info: ModelInfo, name: str) -> ModelInfo:
    """info under the bundled name: the kind, mode and scales the name stands
    for, with info's own notes, schedule, loss and step search."""
    want = bundled_info(name)
    return replace(info, name=want.name, kind=want.kind, mode=want.mode, scales=want.scales)


def bundled_info(name: str) -> ModelInfo:
    """What the bundled model `name` (one of BUNDLED) stands for."""
    kind = CATALOGUE[kind_of(name)]
    return ModelInfo(name, kind.name, kind.mode, kind.scales)


def _bundled_path(name: str):
    return resources.files("mzsr_fast") / "weights" / f"{name}.safetensors"


def bundled_models() -> dict[str, bool]:
    """Bundled model names (BUNDLED) and whether their weights are shipped in this install."""
    return {name: _bundled_path(name).is_file() for name in BUNDLED}


def default_model(mode: str | None = None, scale: int | None = None, steps: int | None = None) -> str:
    """The bundled model used when none is named: the first shipped kind
    trained for this scale (None: any) and subsampling mode (None: direct),
    else the first shipped one for the scale, else direct_x2; for steps=1 its
    one-step model where that is shipped. So at scale 2 a g_b_* kernel gets
    bicubic_x2; at scale 4 every kernel gets direct_x4."""
    shipped = bundled_models()
    fits_scale = [name for name in CATALOGUE if shipped[name] and (scale is None or scale in CATALOGUE[name].scales)]
    fits_mode = [name for name in fits_scale if CATALOGUE[name].mode == (mode or "direct")]
    name = (fits_mode or fits_scale or ["direct_x2"])[0]
    return name + ONE_STEP if steps == 1 and shipped.get(name + ONE_STEP) else name


def resolve_model(model, mode: str | None, scale: int | None, device=None,
                  steps: int | None = None) -> tuple[MZSRNet, "ModelInfo"]:
    """load_model(model), where None stands for default_model(mode, scale, steps)."""
    return load_model(default_model(mode, scale, steps) if model is None else model, device=device)


def check_scale(model, info: "ModelInfo", scale: int, name: str = "scale") -> None:
    """ValueError when the model (None: the one picked for the scale) does not serve scale."""
    if not info.scales or scale in info.scales:
        return
    if model is None:
        shipped = [name for name, is_shipped in bundled_models().items() if is_shipped]
        served = sorted({s for name in shipped for s in CATALOGUE[kind_of(name)].scales})
        raise ValueError(f"{name}: the shipped models serve scales {', '.join(map(str, served))}, got {scale}")
    raise ValueError(f"{name}: the model {info.name!r} was trained for scales {info.scales}, got {scale}")


def is_meta_learned(info: "ModelInfo") -> bool:
    """Whether the model was meta-trained for test-time adaptation (a bundled
    model, or a file written by the meta-trainer): poor until adapted."""
    return info.name in BUNDLED or info.name.startswith("metatrain-")


def unadapted_warning(info: "ModelInfo") -> str | None:
    """Why MZSR(0) with this model is a poor choice, or None when it is not
    meta-learned (a pretrained network is good as it is)."""
    if not is_meta_learned(info):
        return None
    return (f"steps=0: the model {info.name!r} is meta-learned to be adapted and is poor without adaptation "
            f"(often below plain bicubic upsampling); use steps >= 1 (1 for the lowest latency, 10 for the "
            f"best quality), or bicubic upsampling if no adaptation is wanted")


def mode_mismatch(kernel_mode: str | None, info: "ModelInfo", scale: int | None = None,
                  steps: int | None = None) -> str | None:
    """Why a kernel preset's subsampling mode does not fit the model (which
    degrades the son with its own mode), or None when it fits; the hint names
    the shipped model for that mode, scale and number of steps, if any."""
    if kernel_mode in (None, info.mode):
        return None
    fitting = default_model(kernel_mode, scale, steps)
    hint = f"the shipped {fitting!r} fits it" if CATALOGUE[kind_of(fitting)].mode == kernel_mode else \
        f"no {kernel_mode} model is shipped" + (f" for x{scale}" if scale else "")
    return (f"kernel: the preset comes with {kernel_mode} subsampling, but the model {info.name!r} adapts with "
            f"{info.mode} subsampling; {hint}")


def save_model(path, net: MZSRNet, info: ModelInfo) -> None:
    """Write the weights and info to a safetensors file (no pickle), atomically:
    a crash leaves the old file or the new one, never a torn one. Weights that
    are not finite are refused (load_model would refuse the file)."""
    if not isinstance(net, MZSRNet):
        raise TypeError(f"net: expected an MZSRNet, got {type(net).__name__}")
    if not isinstance(info, ModelInfo):
        raise TypeError(f"info: expected a ModelInfo, got {type(info).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise ValueError(f"path: {os.fspath(path)!r} is a folder" if os.path.isdir(path) else
                         f"path: the folder {folder!r} does not exist")
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    for key, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"net: {key} holds NaN or infinite values")
    atomic_write(path, save_safetensors(state, metadata=info.metadata()))


def load_model(model=None, device=None) -> tuple[MZSRNet, ModelInfo]:
    """A network and its info from None (the default bundled model), a bundled
    name, a .safetensors path, or an MZSRNet (returned as is, with the info it
    was loaded with, else a "custom" info that accepts any scale). A file whose
    weights are not floating point or not finite is refused (ValueError naming it)."""
    if isinstance(model, MZSRNet):
        return model, getattr(model, "model_info", ModelInfo("custom", scales=()))
    name = default_model() if model is None else model
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"model: expected None, a bundled name, a path or an MZSRNet, got {type(model).__name__}")
    name = os.fspath(name)
    if name in BUNDLED:
        path = _bundled_path(name)
        if not path.is_file():
            raise ValueError(f"model: the bundled model {name!r} is not trained yet (no weights shipped); "
                             f"shipped: {[n for n, ok in bundled_models().items() if ok] or 'none'}")
        path = str(path)
    elif os.path.isfile(name):
        path = name
    else:
        raise ValueError(f"model: {name!r} is neither a bundled model ({', '.join(BUNDLED)}) nor a file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        state = load_file(path)
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"model: {path}: not a readable safetensors file ({error})") from None
    for key, tensor in state.items():  # load_state_dict would cast integers silently
        if not tensor.is_floating_point():
            raise ValueError(f"model: {path}: {key} is {tensor.dtype}, expected floating-point weights")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"model: {path}: {key} holds NaN or infinite values")
    net = MZSRNet(initialise=False)
    mismatch = state_dict_mismatch(net, state)
    if mismatch is not None:
        raise ValueError(f"model: {path}: weights do not fit MZSRNet: {mismatch}")
    net.load_state_dict(state)
    info = ModelInfo.from_metadata(meta, os.path.splitext(os.path.basename(path))[0], source=path)
    if name in BUNDLED:
        info = as_bundled(info, name)
    net.model_info = info  # lets a loaded net be passed around without losing its info
    return (net.to(device) if device is not None else net), info


def kind_for(mode: str, scales: tuple[int, ...]) -> str:
    """The CATALOGUE key of a model trained for mode and scales."""
    if mode == "bicubic":
        return "bicubic_x2"
    if len(scales) > 1:
        return "multiscale"
    return "direct_x4" if scales == (4,) else "direct_x2"


def load_tf_checkpoint(prefix) -> dict[str, torch.Tensor]:
    """The MZSRNet state dict ("layers.{i}.weight" [out, in, 3, 3], "layers.{i}.bias")
    of a checkpoint of the reference implementation (TensorFlow, variables
    MODEL/conv{1..8}/kernel [3, 3, in, out] and MODEL/conv{1..8}/bias), read
    without TensorFlow. Optimiser slots and counters are ignored. Raises
    ValueError naming the file for a missing variable, a wrong shape or a
    checkpoint of another network (and TFCheckpointError for a corrupt one).
    """
    from .model import CHANNELS
    from .tf_checkpoint import list_tf_checkpoint, read_tf_checkpoint, resolve_prefix

    prefix = resolve_prefix(prefix)
    layers = len(CHANNELS) - 1
    wanted = {f"MODEL/conv{i + 1}/{part}": i for i in range(layers) for part in ("kernel", "bias")}
    tensors = read_tf_checkpoint(prefix, names=wanted)
    where = f"{prefix}.index"
    missing = [name for name in wanted if name not in tensors]
    if len(missing) == len(wanted):
        raise ValueError(f"{where}: not a checkpoint of the MZSR network (no MODEL/conv1..{layers} variables)")
    if missing:
        raise ValueError(f"{where}: missing variable(s) {', '.join(missing)}")
    extra = sorted(n for n in list_tf_checkpoint(prefix) if n.startswith("MODEL/conv")
                   and n.split("/")[1] not in {f"conv{i + 1}" for i in range(layers)})
    if extra:
        raise ValueError(f"{where}: not a checkpoint of the MZSR network (extra layers: {', '.join(extra[:3])})")
    state = {}
    for name, array in tensors.items():
        i = wanted[name]
        c_in, c_out = CHANNELS[i], CHANNELS[i + 1]
        expected = (3, 3, c_in, c_out) if name.endswith("kernel") else (c_out,)
        if array.shape != expected:
            raise ValueError(f"{where}: {name} has shape {list(array.shape)}, expected {list(expected)}")
        if array.dtype != np.float32:
            raise ValueError(f"{where}: {name} is {array.dtype}, expected float32")
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: {name} holds NaN or infinite values")
        tensor = torch.from_numpy(array)
        if name.endswith("kernel"):
            state[f"layers.{i}.weight"] = tensor.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        else:
            state[f"layers.{i}.bias"] = tensor.clone()
    return state


def import_tf_checkpoint(prefix, out, mode: str = "direct", scales: tuple[int, ...] = (2,),
                         schedule: tuple[float, ...] | None = None, name: str | None = None) -> ModelInfo:
    """Convert a reference checkpoint into a model file that load_model, adapt,
    sr, eval and metatrain --init take. The file's metadata records the source,
    mode, scales and the test-time schedule (default: the reference's schedule
    for that kind of model). mode and scales must be those of one of the
    reference's released models (CATALOGUE): ValueError otherwise."""
    from .tf_checkpoint import resolve_prefix

    if mode not in ("direct", "bicubic"):
        raise ValueError(f"mode: expected 'direct' or 'bicubic', got {mode!r}")
    scales = tuple(int(s) for s in scales)
    if not scales or any(s < 2 for s in scales):
        raise ValueError(f"scales: expected integers >= 2, got {scales!r}")
    kinds = [kind.name for kind in CATALOGUE.values() if (kind.mode, kind.scales) == (mode, scales)]
    if not kinds:
        released = "; ".join(f"{k.mode} {','.join(map(str, k.scales))} ({k.name})" for k in CATALOGUE.values())
        raise ValueError(f"mode, scales: the reference released no {mode} model for scales "
                         f"{','.join(map(str, scales))}; expected one of: {released}")
    kind = kinds[0]
    if schedule:
        schedule = parse_schedule(format_schedule(tuple(schedule)))
    prefix = resolve_prefix(prefix)
    net = MZSRNet(initialise=False)
    net.load_state_dict(load_tf_checkpoint(prefix))
    info = ModelInfo(name or os.path.splitext(os.path.basename(os.fspath(out)))[0], kind, mode, scales,
                     notes={"source": f"TensorFlow checkpoint {os.path.basename(prefix)}"},
                     own_schedule=schedule or CATALOGUE[kind].schedule)
    save_model(out, net, info)
    return info
