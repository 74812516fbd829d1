"""Bundled and saved MZSR models: weights (safetensors) plus what the meta-test
needs to know about them (subsampling mode, scales, learning-rate schedule)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from importlib import resources

from safetensors.torch import load_file, safe_open, save_file

from .model import MZSRNet

__all__ = ["ModelInfo", "SCHEDULES", "BUNDLED", "load_model", "save_model", "bundled_models",
           "DEFAULT_MODEL", "default_model", "resolve_model", "mode_mismatch"]

# Per-step learning rates of the meta-test (SPEC section 8); the last one repeats.
SCHEDULES = {
    "direct_x2": (0.02, 0.01, 0.01, 0.01, 0.005),
    "multiscale": (0.01, 0.01, 0.01, 0.005, 0.005),
    "bicubic_x2": (0.01, 0.01, 0.01, 0.001, 0.001),
    "direct_x4": (0.01, 0.005, 0.005, 0.005, 0.001),
}

DEFAULT_MODEL = "direct_x2"


@dataclass(frozen=True)
class ModelInfo:
    """What a model was trained for: kind (a SCHEDULES key), subsampling mode,
    scales (empty: not known, any scale accepted)."""

    name: str
    kind: str = "direct_x2"
    mode: str = "direct"
    scales: tuple[int, ...] = (2,)
    notes: dict = field(default_factory=dict, compare=False)

    @property
    def schedule(self) -> tuple[float, ...]:
        return SCHEDULES[self.kind]

    def metadata(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "mode": self.mode,
                "scales": ",".join(str(s) for s in self.scales), **{k: str(v) for k, v in self.notes.items()}}

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, fallback_name: str) -> "ModelInfo":
        meta = dict(meta or {})
        kind = meta.pop("kind", "direct_x2")
        if kind not in SCHEDULES:
            kind = "direct_x2"
        scales = tuple(int(s) for s in meta.pop("scales", "2").split(",") if s)
        return cls(name=meta.pop("name", fallback_name), kind=kind, mode=meta.pop("mode", "direct"),
                   scales=scales, notes=meta)


BUNDLED = {
    "direct_x2": ModelInfo("direct_x2", "direct_x2", "direct", (2,)),
    "bicubic_x2": ModelInfo("bicubic_x2", "bicubic_x2", "bicubic", (2,)),
    "direct_x4": ModelInfo("direct_x4", "direct_x4", "direct", (4,)),
    "multiscale": ModelInfo("multiscale", "multiscale", "direct", (2, 3, 4)),
}


def _bundled_path(name: str):
    return resources.files("mzsr_fast") / "weights" / f"{name}.safetensors"


def bundled_models() -> dict[str, bool]:
    """Bundled model names and whether their weights are shipped in this install."""
    return {name: _bundled_path(name).is_file() for name in BUNDLED}


def default_model(mode: str | None = None, scale: int | None = None) -> str:
    """The bundled model used when none is named: the first shipped one trained
    for this scale (None: any) and subsampling mode (None: direct), else the
    first shipped one for the scale, else DEFAULT_MODEL. A g_b_* kernel thus
    gets bicubic_x2 once it is shipped."""
    fits_scale = [name for name, shipped in bundled_models().items()
                  if shipped and (scale is None or scale in BUNDLED[name].scales)]
    for name in fits_scale:
        if BUNDLED[name].mode == (mode or "direct"):
            return name
    return fits_scale[0] if fits_scale else DEFAULT_MODEL


def resolve_model(model, mode: str | None, scale: int | None, device=None) -> tuple[MZSRNet, "ModelInfo"]:
    """load_model(model), where None stands for default_model(mode, scale)."""
    return load_model(default_model(mode, scale) if model is None else model, device=device)


def mode_mismatch(kernel_mode: str | None, info: "ModelInfo") -> str | None:
    """Why a kernel preset's subsampling mode does not fit the model (which
    degrades the son with its own mode), or None when it fits."""
    if kernel_mode in (None, info.mode):
        return None
    fitting = [name for name, shipped in bundled_models().items() if shipped and BUNDLED[name].mode == kernel_mode]
    hint = f"the shipped {fitting[0]!r} fits it" if fitting else f"no {kernel_mode} model is shipped yet"
    return (f"kernel: the preset comes with {kernel_mode} subsampling, but the model {info.name!r} adapts with "
            f"{info.mode} subsampling; {hint}")


def save_model(path, net: MZSRNet, info: ModelInfo) -> None:
    """Write the weights and info to a safetensors file (no pickle)."""
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, os.fspath(path), metadata=info.metadata())


def load_model(model=None, device=None) -> tuple[MZSRNet, ModelInfo]:
    """A network and its info from None (the default bundled model), a bundled
    name, a .safetensors path, or an MZSRNet (returned as is, with the info it
    was loaded with, else a "custom" info that accepts any scale)."""
    if isinstance(model, MZSRNet):
        return model, getattr(model, "model_info", ModelInfo("custom", scales=()))
    name = DEFAULT_MODEL if model is None else model
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
    net = MZSRNet()
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"model: {path}: weights do not fit MZSRNet ({error})") from None
    info = ModelInfo.from_metadata(meta, os.path.splitext(os.path.basename(path))[0])
    if name in BUNDLED:  # what the name stands for, with the file's notes (training iteration)
        info = replace(BUNDLED[name], notes=info.notes)
    net.model_info = info  # lets a loaded net be passed around without losing its info
    return (net.to(device) if device is not None else net), info
