"""Checkpoints of a training run: atomic files, the last N kept, exact resume.

Layout of RUN_DIR:

    latest.safetensors                  newest weights (plain MZSRNet state dict)
    checkpoints/step-00001000.safetensors   weights at iteration 1000
    checkpoints/step-00001000.state.pt  optimiser, RNG, step, config (plain
                                        tensors/dicts), with its own SHA-256

A state file is one header line, b"mzsr_fast checkpoint state, format 2,
sha256 " + the hex SHA-256 of the rest + b"\n", then torch.save(state).
read_state verifies it, so a changed byte anywhere in the file makes the
checkpoint unreadable (torch.load alone does not check its zip records' CRCs: a
flipped byte in a tensor loads as a different value). Files of format 1 (the
bare torch.save(state), written before state checksums) still load, with a
warning that their state is not verified; the weights' SHA-256 is checked in
both formats.

A checkpoint is committed when its state file exists: the weights are written
first, the state (which records the weights' SHA-256) second, latest.safetensors
third. Each file is written to a temporary file in the same folder, flushed,
fsync'ed, renamed over the target with os.replace and the folder fsync'ed, so a
process killed at any moment leaves the previous checkpoint intact; leftovers
(temporary files, weights without a state) are ignored and removed later.
Checkpoints that do not load or verify are skipped, and do not count toward
the N kept; a checkpoint with NaN or infinite values is never written.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import re
import warnings
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .._files import TEMP_PREFIX, atomic_write, fsync_dir
from ..model import state_dict_mismatch

__all__ = ["atomic_write", "fsync_dir", "Checkpoint", "CheckpointManager", "rng_state", "set_rng_state",
           "weights_bytes", "load_weights", "resolve_weights", "load_into", "TEMP_PREFIX", "NonFiniteError",
           "first_non_finite", "state_bytes", "read_state"]

STATE_FORMAT = 2
STATE_HEADER = f"mzsr_fast checkpoint state, format {STATE_FORMAT}, sha256 ".encode()
UNVERIFIED_FORMAT = 1  # the bare torch.save(state), before state checksums
_ZIP_MAGIC = b"PK\x03\x04"  # how a torch.save file starts
_NAME = re.compile(r"^step-(\d{8,})\.state\.pt$")
_WEIGHTS_NAME = re.compile(r"^step-(\d{8,})\.safetensors$")


class NonFiniteError(ValueError):
    """NaN or infinite values where training needs finite ones."""


def first_non_finite(values, name: str = "") -> str | None:
    """The name (dotted path) of the first floating-point tensor holding a NaN
    or an infinity in values (a tensor, or dicts / lists / tuples of them), else None."""
    if isinstance(values, torch.Tensor):
        finite = not values.is_floating_point() or bool(torch.isfinite(values).all())
        return None if finite else name
    if isinstance(values, dict):
        items = values.items()
    elif isinstance(values, (list, tuple)):
        items = enumerate(values)
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None


def weights_bytes(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A state dict as safetensors bytes (CPU, contiguous)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return save_safetensors(tensors, metadata=metadata)


def load_weights(path) -> dict[str, torch.Tensor]:
    with open(os.fspath(path), "rb") as f:
        return load_safetensors(f.read())


def resolve_weights(path, name: str = "init") -> str:
    """A weights file from a .safetensors path or a run folder (its latest.safetensors)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, "latest.safetensors")
        if not os.path.isfile(candidate):
            raise ValueError(f"{name}: {path} is a folder without latest.safetensors")
        return candidate
    if not os.path.isfile(path):
        raise ValueError(f"{name}: {path}: no such weights file")
    return path


def load_into(model: torch.nn.Module, path) -> None:
    """Load a safetensors state dict into model; ValueError naming the file
    when it does not fit or holds other than finite floating-point values."""
    try:
        weights = load_weights(path)
    except Exception as error:  # noqa: BLE001  (safetensors raises its own types)
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    for name, tensor in weights.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{path}: {name} holds {tensor.dtype} values; expected floating-point weights")
    bad = first_non_finite(weights)
    if bad is not None:
        raise NonFiniteError(f"{path}: {bad} holds NaN or infinite values; expected finite weights")
    mismatch = state_dict_mismatch(model, weights)
    if mismatch is not None:
        raise ValueError(f"{path}: weights do not fit {type(model).__name__}: {mismatch}")
    model.load_state_dict(weights)


def rng_state() -> dict:
    """Every random number generator the process may use, as plain tensors and numbers."""
    import numpy as np

    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype("int64")),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"checkpoint holds CUDA RNG states for {len(cuda)} devices, this machine has "
                          f"{torch.cuda.device_count()}: CUDA RNG states not restored", stacklevel=2)


@dataclass
class Checkpoint:
    step: int
    weights_path: str
    state_path: str

    def load(self, map_location="cpu") -> tuple[dict[str, torch.Tensor], dict]:
        """(weights, state). Raises ValueError when the pair is broken."""
        state = read_state(self.state_path, map_location)
        try:
            with open(self.weights_path, "rb") as f:
                data = f.read()
        except OSError as error:
            raise ValueError(f"{self.weights_path}: missing checkpoint weights ({error})") from None
        if hashlib.sha256(data).hexdigest() != state.get("weights_sha256"):
            raise ValueError(f"{self.weights_path}: weights do not match their state file (SHA-256 differs)")
        if state.get("step") != self.step:
            raise ValueError(f"{self.state_path}: records step {state.get('step')}, its name says {self.step}")
        return load_safetensors(data), state


def state_bytes(state: dict) -> bytes:
    """The content of a state file for state (see the module docstring). TypeError
    when state does not load back with torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    try:  # refuse to write a state that could not be resumed from
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise TypeError(f"checkpoint state is not loadable with weights_only=True: {error}") from None
    return STATE_HEADER + hashlib.sha256(data).hexdigest().encode() + b"\n" + data


def read_state(path, map_location="cpu") -> dict:
    """The state dict of a state file, its SHA-256 verified. ValueError naming
    path when it is unreadable, damaged or altered; a file of format 1 (no
    checksum) is returned with a warning."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ValueError(f"{path}: unreadable checkpoint state ({error})") from None
    if data.startswith(_ZIP_MAGIC):
        state = _torch_load(data, path, map_location)
        if not isinstance(state, dict) or state.get("format") != UNVERIFIED_FORMAT:
            raise ValueError(f"{path}: unreadable checkpoint state (a torch file without the header line "
                             f"of format {STATE_FORMAT}, and not a state of format {UNVERIFIED_FORMAT})")
        warnings.warn(f"{path}: a checkpoint state of format {UNVERIFIED_FORMAT}, written before state files "
                      f"carried their SHA-256: loaded without verifying it (its weights are verified; "
                      f"checkpoints written from now on carry one)", stacklevel=2)
        return state
    header, newline, payload = data.partition(b"\n")
    digest = header[len(STATE_HEADER):].decode("ascii", "replace")
    if not newline or not header.startswith(STATE_HEADER) or len(digest) != 64:
        raise ValueError(f"{path}: unreadable checkpoint state (no header line "
                         f"{(STATE_HEADER + b'<SHA-256>').decode()!r})")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"{path}: checkpoint state does not match its SHA-256 (the file was damaged or altered)")
    state = _torch_load(payload, path, map_location)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: unreadable checkpoint state (holds a {type(state).__name__}, expected a dict)")
    return state


def _torch_load(data: bytes, path: str, map_location):
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unreadable state file)
        raise ValueError(f"{path}: unreadable checkpoint state ({_load_error(error)})") from None


def _load_error(error: Exception) -> str:
    """One line saying why torch.load failed (not torch's advice to retry without weights_only)."""
    text = str(error).strip()
    if text.startswith("Weights only load failed"):
        return "not a file of plain tensors, numbers and dicts"
    return text.splitlines()[0] if text else type(error).__name__


class CheckpointManager:
    """Writes, lists, verifies and prunes the checkpoints of one run folder."""

    def __init__(self, run_dir, keep: int = 3):
        self.run_dir = os.fspath(run_dir)
        self.folder = os.path.join(self.run_dir, "checkpoints")
        self.keep = int(keep)
        self._good: set[int] = set()  # steps written or verified by this manager

    @property
    def latest_weights(self) -> str:
        return os.path.join(self.run_dir, "latest.safetensors")

    def _paths(self, step: int) -> tuple[str, str]:
        stem = os.path.join(self.folder, f"step-{step:08d}")
        return stem + ".safetensors", stem + ".state.pt"

    def list(self) -> list[Checkpoint]:
        """Committed checkpoints (those with a state file), oldest first."""
        if not os.path.isdir(self.folder):
            return []
        found = []
        for name in os.listdir(self.folder):
            match = _NAME.match(name)
            if match:
                step = int(match.group(1))
                found.append(Checkpoint(step, *self._paths(step)))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> tuple[Checkpoint, dict[str, torch.Tensor], dict] | None:
        """The newest checkpoint that loads and verifies, with its (weights, state);
        broken newer ones are reported with a warning and skipped. None when
        there is no checkpoint; ValueError when there are some but none loads."""
        errors = []
        for checkpoint in reversed(self.list()):
            try:
                weights, state = checkpoint.load()
            except ValueError as error:
                warnings.warn(f"skipping a broken checkpoint: {error}", stacklevel=2)
                errors.append(str(error))
                continue
            self._good.add(checkpoint.step)
            return checkpoint, weights, state
        if errors:
            raise ValueError(f"{self.folder}: none of its {len(errors)} checkpoint(s) can be read ("
                             + "; ".join(errors) + "). Move them away to start a new run in this folder")
        return None

    def verified(self, checkpoint: Checkpoint) -> bool:
        """Whether checkpoint loads and verifies (read once per manager)."""
        if checkpoint.step not in self._good:
            try:
                checkpoint.load()
            except ValueError:
                return False
            self._good.add(checkpoint.step)
        return True

    def clean(self) -> None:
        """Remove leftovers of interrupted writes: temporary files and weights without a state."""
        committed = {c.step for c in self.list()}
        for folder in (self.run_dir, self.folder):
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                weights = _WEIGHTS_NAME.match(name) if folder == self.folder else None
                orphan = weights is not None and int(weights.group(1)) not in committed
                if name.startswith(TEMP_PREFIX) or orphan:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass

    def save(self, step: int, state_dict: dict[str, torch.Tensor], state: dict,
             metadata: dict[str, str] | None = None, extra_files: dict[str, bytes] | None = None) -> Checkpoint:
        """Write weights, then state (with the weights' SHA-256), then latest.safetensors
        and extra_files (name in RUN_DIR -> bytes); then prune to the last keep.
        NonFiniteError, before anything is written, when a floating-point
        tensor of state_dict or state holds a NaN or an infinity."""
        bad = first_non_finite({"weights": state_dict, "state": state})
        if bad is not None:
            raise NonFiniteError(f"checkpoint of iteration {step} not written: {bad} holds NaN or infinite values "
                                 f"(training diverged)")
        os.makedirs(self.folder, exist_ok=True)
        weights_path, state_path = self._paths(step)
        data = weights_bytes(state_dict, metadata)
        state = dict(state, step=int(step), format=STATE_FORMAT, weights_sha256=hashlib.sha256(data).hexdigest())
        blob = state_bytes(state)
        atomic_write(weights_path, data)
        atomic_write(state_path, blob)
        self._good.add(step)
        atomic_write(self.latest_weights, data)
        for name, blob in (extra_files or {}).items():
            atomic_write(os.path.join(self.run_dir, name), blob)
        self.prune()
        return Checkpoint(step, weights_path, state_path)

    def prune(self) -> None:
        """Remove the checkpoints older than the newest `keep` that verify.
        Broken ones do not count, so they never push out a good one."""
        if self.keep <= 0:
            return
        checkpoints, good = self.list(), 0
        for index in range(len(checkpoints) - 1, -1, -1):
            good += self.verified(checkpoints[index])
            if good == self.keep:
                break
        else:
            return
        for checkpoint in checkpoints[:index]:
            # the state first: without it the weights are an ignored leftover
            for path in (checkpoint.state_path, checkpoint.weights_path):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        fsync_dir(self.folder)
