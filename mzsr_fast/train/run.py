"""One training run in RUN_DIR: starting or resuming it (refusing changed
settings, see settings.py), the iteration loop, logging and checkpoints, and
stopping on a request (signals.py). Both trainers (pretrain, metatrain) run through `train`:

    train("metatrain", config, MetaLearner, on_step)

A trainer is built as make_trainer(config, dist) (both start from
trainer.Trainer, their shared setup) and provides:

    model, optimizer            what is trained (and saved)
    columns                     names of the CSV columns it fills (time_s, the
                                training seconds over all sessions, and it_per_s
                                are added)
    pin                         whether batches are pinned for CUDA copies
    batch(step)                 this rank's CPU batch of iteration step (a pure
                                function of seed and step; runs in the prefetch thread)
    train_step(batch, step)     one optimiser step; returns {name: detached
                                tensor}: this rank's share of the global mean of
                                each quantity, averaged over the log interval
    row(step)                   values logged as they are (lr, schedule weights)
    validate()                  {column: value}, on rank 0, every validate_every
    restore(weights, state)     load a checkpoint
    checkpoint()                (extra state, safetensors metadata, extra files)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import warnings

import torch

from . import distributed
from .checkpoints import CheckpointManager, NonFiniteError, atomic_write, rng_state, set_rng_state
from .data import Prefetcher
from .distributed import Distributed
from .lock import LOCK_NAME, RunLock
from .progress import MetricsLog, ProgressBar
from .settings import ConfigMismatchError, config_dict, config_differences, field_defaults
from .signals import StopSignals

__all__ = ["Run", "TrainResult", "train"]


@dataclasses.dataclass
class TrainResult:
    """What a train function returns: the last completed iteration, whether it
    stopped early on a signal, the run folder and newest weights, and the
    logged training losses (step, loss)."""

    step: int
    interrupted: bool
    run_dir: str
    latest: str
    losses: list = dataclasses.field(default_factory=list)


class Run:
    """A training run folder seen from one process (only rank 0 writes, and
    holds the folder's lock from open() to the end of the with block)."""

    def __init__(self, kind: str, config, dist: Distributed, handle_signals: bool = True):
        self.kind = kind
        self.config = config
        self.settings = config_dict(config)
        self.dist = dist
        self.run_dir = os.path.abspath(os.fspath(config.out))
        self.checkpoints = CheckpointManager(self.run_dir, keep=config.keep)
        self.lock = RunLock(self.run_dir)
        self.signals = StopSignals(handle_signals)
        self.changes: list[str] = []
        self.elapsed_before = 0.0  # training seconds of earlier sessions of a resumed run
        self.saved_step: int | None = None  # iteration of the newest good checkpoint
        self.made_folder = False  # whether open() made RUN_DIR
        self.t0 = time.perf_counter()

    def __enter__(self):
        self.signals.__enter__()
        return self

    def __exit__(self, *exc):
        self.signals.__exit__(*exc)
        if exc[0] is not None and self.made_folder:  # a failed start leaves no folder of only its .lock
            with contextlib.suppress(OSError):
                if os.listdir(self.run_dir) == [LOCK_NAME]:
                    os.unlink(self.lock.path)
                    os.rmdir(self.run_dir)
        self.lock.release()

    @property
    def stop_requested(self) -> bool:
        return self.signals.requested

    def request_stop(self) -> None:
        """What a signal does; for callers that stop a run from code."""
        self.signals.requested = True

    def open(self):
        """Lock and prepare RUN_DIR. Returns None for a new run, else (step,
        weights, state) of the checkpoint to resume from. Raises
        RunLockedError when another process trains in RUN_DIR, ValueError when
        RUN_DIR holds a run and resume is off, when resume is on and there is
        no checkpoint (resume_or_start: start a new run then) and when every
        checkpoint is unreadable, and ConfigMismatchError when a setting
        changed and allow_config_change is off."""
        self.dist.on_main(self._prepare_folder)
        found = self.checkpoints.latest()
        resume = self.config.resume or self.config.resume_or_start
        if found is None:
            if self.config.resume:
                raise ValueError(f"--resume: {self.run_dir} has no checkpoint to resume from; pass "
                                 f"--resume-or-start to start a new run when there is none")
            return None
        checkpoint, weights, state = found
        if not resume:
            raise ValueError(f"--out: {self.run_dir} already holds a {state.get('kind', '?')} run at iteration "
                             f"{checkpoint.step}; pass --resume to continue it, or choose another folder")
        if state.get("kind") != self.kind:
            raise ConfigMismatchError(f"--resume: {self.run_dir} holds a {state.get('kind')!r} run, "
                                      f"not a {self.kind} run")
        differences = config_differences(state.get("config", {}), self.settings,
                                         defaults=field_defaults(self.config))
        if differences and not self.config.allow_config_change:
            raise ConfigMismatchError(
                f"--resume: the settings differ from the run in {self.run_dir} (iteration {checkpoint.step}): "
                + "; ".join(differences) + ". Use the same settings, or pass --allow-config-change "
                "to continue with the new ones")
        self.changes = differences
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        if differences and self.dist.is_main:  # allowed, but never silent
            for change in differences:
                print(f"{self.kind}: resuming {self.run_dir} with a changed setting: {change}", file=sys.stderr)
        if state.get("world_size", 1) != self.dist.world_size and self.dist.is_main:
            warnings.warn(f"resuming a run made with {state.get('world_size')} process(es) on "
                          f"{self.dist.world_size}: the same global batch, but sums are taken in another "
                          f"order, so results are not bitwise those of an uninterrupted run", stacklevel=2)
        self.saved_step = checkpoint.step
        return checkpoint.step, weights, state

    def _prepare_folder(self) -> None:
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise ValueError(f"--out: {self.run_dir} exists and is not a folder")
        self.made_folder = not os.path.exists(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.lock.acquire()
        self.checkpoints.clean()  # only now: another process's temporary files are not leftovers

    def write_settings(self) -> None:
        """config.json: the settings the run goes on with (once its checkpoint has been restored)."""
        text = json.dumps({"kind": self.kind, **self.settings}, indent=2, sort_keys=True)
        self.dist.on_main(lambda: atomic_write(os.path.join(self.run_dir, "config.json"), text.encode()))

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after step (every checkpoint_every, and the last)."""
        every = self.config.checkpoint_every
        return step >= self.config.iterations or (every > 0 and step % every == 0)

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict,
             metadata: dict[str, str] | None = None, extra_files: dict[str, bytes] | None = None) -> None:
        """Write a checkpoint (rank 0 only); every rank waits for it, and stops
        when it failed (NonFiniteError for NaN or infinite values)."""
        def write():
            state = {
                "kind": self.kind,
                "config": self.settings,
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(),
                "world_size": self.dist.world_size,
                "torch_version": str(torch.__version__),
                "elapsed_s": self.elapsed_before + time.perf_counter() - self.t0,
                **extra,
            }
            self.checkpoints.save(step, model.state_dict(), state, metadata=metadata, extra_files=extra_files)
        self.dist.on_main(write)
        self.saved_step = step

    def _diverged(self, done: int, loss: torch.Tensor) -> str:
        value = float(loss.float().sum())
        shown = f"{value}" if not math.isfinite(value) else "not finite on another process"
        kept = (f"the checkpoint of iteration {self.saved_step} in {self.run_dir} is intact"
                if self.saved_step is not None else f"{self.run_dir} has no checkpoint yet")
        return (f"{self.kind}: the loss at iteration {done} is {shown}: training diverged and was stopped "
                f"without saving it; {kept}. Lower the learning rate, or check --init and the training images")

    def loop(self, trainer, start: int, resumed: bool, on_step=None) -> TrainResult:
        """Iterations start..config.iterations of trainer (see the module docstring)."""
        config, dist = self.config, self.dist
        log = MetricsLog(self.run_dir, ["time_s", "it_per_s"] + list(trainer.columns),
                         resume_step=start if resumed else None, enabled=dist.is_main)
        bar = ProgressBar(config.iterations, start, self.kind, enabled=config.progress and dist.is_main)
        losses, sums, count = [], {}, 0
        t0 = self.t0 = time.perf_counter()
        step, interrupted = start, False
        prefetch = Prefetcher(trainer.batch, start, config.iterations, config.prefetch, pin=trainer.pin)
        try:
            for step in range(start, config.iterations):
                got, batch = next(prefetch)
                if got != step:
                    raise RuntimeError(f"data loader out of step: got batch {got} for iteration {step}")
                stats = trainer.train_step(batch, step)
                # a sync per iteration on CUDA, so that a diverged iteration is never logged or saved
                finite = bool(torch.isfinite(stats["loss"]).all())
                for key, value in stats.items():
                    sums[key] = sums[key] + value if key in sums else value.clone()
                count += 1
                done = step + 1
                if on_step is not None:
                    on_step(done, self)
                stop, diverged = dist.any(self.stop_requested, not finite)
                if diverged:
                    raise NonFiniteError(self._diverged(done, stats["loss"]))
                row = {}
                if done % config.log_every == 0 or done == config.iterations or stop:
                    keys = sorted(sums)
                    totals = dist.sum(torch.stack([sums[k].float().reshape(()) for k in keys])).tolist()
                    means = {k: v / count for k, v in zip(keys, totals)}
                    sums, count = {}, 0
                    elapsed = time.perf_counter() - t0
                    row.update(means, time_s=self.elapsed_before + elapsed, it_per_s=(done - start) / elapsed,
                               **trainer.row(step))
                    losses.append((done, means["loss"]))
                    bar.update(done, loss=means["loss"])
                if config.validate_every and done % config.validate_every == 0 and dist.is_main:
                    scores = trainer.validate()
                    row.update(scores)
                    bar.message(f"{self.kind} {done}: validation " +
                                ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
                if row:
                    log.log(done, row)
                if self.due(done) or stop:
                    extra, metadata, files = trainer.checkpoint()
                    self.save(done, trainer.model, trainer.optimizer, extra,
                              metadata=dict(metadata, step=str(done)), extra_files=files)
                step = done
                if stop:
                    interrupted = True
                    bar.message(f"{self.kind}: stopped by {self.signals.signal_name or 'request'} at iteration "
                                f"{done}; checkpoint saved in {self.run_dir} (continue with --resume)")
                    break
        finally:
            prefetch.close()
            bar.close()
            log.close()
        return TrainResult(step, interrupted, self.run_dir, self.checkpoints.latest_weights, losses)


def train(kind: str, config, make_trainer, on_step=None) -> TrainResult:
    """Run or resume a training run of config.iterations iterations.

    Returns when they are done, or after a stop signal (result.interrupted;
    a checkpoint is saved first). on_step(step, run) is called after every
    iteration, e.g. to stop a run from code with run.request_stop().
    """
    config.check()
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    dist = distributed.setup(config.device)
    finished = False
    try:
        with Run(kind, config, dist) as run:
            resumed = run.open()
            # a resumed run's weights come from its checkpoint: its --init file is neither loaded nor needed
            trainer = make_trainer(dataclasses.replace(config, init=None) if resumed is not None else config, dist)
            start = 0
            if resumed is not None:
                start, weights, state = resumed
                trainer.restore(weights, state)
                set_rng_state(state["rng"])
                if start >= config.iterations and dist.is_main:
                    print(f"{kind}: {run.run_dir} is at iteration {start}, at or past --iterations "
                          f"{config.iterations}: nothing to train (raise --iterations to go on)", file=sys.stderr)
            else:
                dist.broadcast_parameters(p for group in trainer.optimizer.param_groups for p in group["params"])
            run.write_settings()  # only now: a resume that fails leaves the run's own settings
            result = run.loop(trainer, start, resumed is not None, on_step)
        finished = True
        return result
    finally:
        dist.close(finished)
        torch.set_num_threads(threads)
