"""Settings of a training run: the ones every run has (RunSettings), their
checks, and how a resumed run's settings are compared with the saved ones."""
from __future__ import annotations

import dataclasses
import math
import os

from .data import FLAT_THRESHOLD

__all__ = ["RunSettings", "RUNTIME_FIELDS", "ConfigMismatchError", "config_dict", "field_defaults",
           "config_differences", "positive_int", "non_negative_int", "positive_float",
           "non_negative_float"]

# Settings that may change between a run and its resumption without notice:
# how long, where, how often to save/log/validate, and on what hardware; and
# the init weights, which only a new run loads (a resumed one takes its
# checkpoint's), so a fresh clone resumes without the file the run started from.
RUNTIME_FIELDS = frozenset({
    "init", "iterations", "out", "resume", "resume_or_start", "allow_config_change", "checkpoint_every", "keep", "device",
    "threads", "validate_every", "val_dir", "val_crop", "val_kernels", "val_steps", "log_every", "prefetch", "progress",
})


class ConfigMismatchError(ValueError):
    """Resuming with settings that differ from the checkpoint's."""


def config_dict(config) -> dict:
    """A config dataclass as plain JSON-able values (paths made absolute, tuples as lists)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, tuple):
            value = list(value)
        if field.name in ("data_dir", "init", "out", "val_dir") and isinstance(value, (str, os.PathLike)):
            value = os.path.abspath(os.fspath(value))
        out[field.name] = value
    return out


def field_defaults(config) -> dict:
    """{name: default} of a config dataclass's fields that have one, as config_dict gives values."""
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}


def config_differences(saved: dict, current: dict, ignore=RUNTIME_FIELDS, defaults: dict | None = None) -> list[str]:
    """'name: saved -> current' for every setting that differs (runtime fields
    ignored). A setting the saved run predates counts as its default (defaults:
    name -> the value a run without that setting had)."""
    lines = []
    defaults = defaults or {}
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        old, new = saved.get(key, defaults.get(key, "<not set>")), current.get(key, "<not set>")
        if old != new:
            lines.append(f"{key}: {old!r} -> {new!r}")
    return lines


@dataclasses.dataclass(kw_only=True)
class RunSettings:
    """Settings every training run has (keyword-only; the configs add their own).

    seed: of the initialisation and the data stream. flat_threshold: patches
    flatter than this are redrawn. amp: bf16 autocast (CPU or CUDA).
    checkpoint_every / keep: save every M iterations (0: only at the end and
    on a stop signal), keeping the last N that load (0: all). resume:
    continue from the newest checkpoint of `out` (an error when there is
    none); resume_or_start: the same, but start a new run when `out` has no
    checkpoint; allow_config_change: resume even when a setting differs.
    device / threads: where to train. validate_every / val_dir: PSNR on
    held-out images every V iterations (0: never). holdout: that many
    images of the training folder (data.holdout_paths) are kept out of
    training and validated on when val_dir is not set. val_crop: validate on
    the central val_crop x val_crop pixels of each image (0: whole images).
    """

    seed: int = 0
    flat_threshold: float = FLAT_THRESHOLD
    amp: bool = False
    checkpoint_every: int = 1000
    keep: int = 3
    resume: bool = False
    resume_or_start: bool = False
    allow_config_change: bool = False
    device: str | None = None
    threads: int | None = None
    validate_every: int = 0
    val_dir: str | None = None
    holdout: int = 0
    val_crop: int = 0
    progress: bool = True

    def check_run_settings(self) -> None:
        """Raise ValueError naming the first bad shared setting."""
        non_negative_int(self, "seed", "checkpoint_every", "keep", "validate_every", "holdout", "val_crop")
        if self.val_dir and self.holdout:
            raise ValueError("holdout: held-out images are validated on only without val_dir (--val-dir); "
                             "give one of the two")
        if self.validate_every and not (self.val_dir or self.holdout):
            raise ValueError("validate_every: validation needs held-out images (val_dir / --val-dir, or "
                             "holdout / --holdout)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {self.threads}")
        if isinstance(self.flat_threshold, bool) or not isinstance(self.flat_threshold, (int, float)) \
                or not math.isfinite(self.flat_threshold):
            raise ValueError(f"flat_threshold: expected a finite number, got {self.flat_threshold!r}")


# Setting checks shared by the config dataclasses: ValueError naming the field.
def positive_int(config, *names):
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def non_negative_int(config, *names):
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def positive_float(config, *names):
    for name in names:
        value = getattr(config, name)
        if not _finite(value) or value <= 0:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")


def non_negative_float(config, *names):
    for name in names:
        value = getattr(config, name)
        if not _finite(value) or value < 0:
            raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
