"""Reporting a run: a progress line on stderr, a CSV of every logged quantity
in RUN_DIR (and TensorBoard event files when tensorboard is installed).

On a terminal the progress bar redraws one line (loss, iterations per second,
ETA); otherwise it prints plain lines, at most one every `plain_interval`
seconds, plus the first and the last.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
import warnings

__all__ = ["ProgressBar", "MetricsLog", "format_duration"]


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


class ProgressBar:
    """Progress of iterations start..total. update(step, **values) after each
    logged iteration; close() at the end."""

    def __init__(self, total: int, start: int = 0, desc: str = "", stream=None, enabled: bool = True,
                 plain_interval: float = 10.0, width: int = 24):
        self.total, self.start, self.desc = int(total), int(start), desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.plain_interval = plain_interval
        self.width = width
        self.t0 = time.perf_counter()
        self._last_print = -math.inf
        self._last_line = ""
        self._printed = True
        self._step = self.start
        self.rate = math.nan

    def line(self, step: int, values: dict) -> str:
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        self.rate = done / elapsed if elapsed > 0 and done > 0 else math.nan
        eta = (self.total - step) / self.rate if self.rate and self.rate > 0 else math.nan
        fraction = step / self.total if self.total else 1.0
        filled = int(round(self.width * min(1.0, fraction)))
        bar = "#" * filled + "-" * (self.width - filled)
        rate = f"{self.rate:.3g} it/s" if self.rate >= 1 or math.isnan(self.rate) else f"{1 / self.rate:.3g} s/it"
        shown = " ".join(f"{k} {_format_value(v)}" for k, v in values.items())
        prefix = f"{self.desc} " if self.desc else ""
        return (f"{prefix}[{bar}] {step}/{self.total} {shown} | {rate} | "
                f"elapsed {format_duration(elapsed)} ETA {format_duration(eta)}")

    def update(self, step: int, **values) -> None:
        self._step = step
        if not self.enabled:
            return
        now = time.perf_counter()
        text = self.line(step, values)
        self._last_line = text
        self._printed = False
        if self.tty:
            self.stream.write("\r" + text[:max(20, _terminal_width() - 1)].ljust(_terminal_width() - 1))
            self.stream.flush()
            self._last_print = now
            self._printed = True
        elif now - self._last_print >= self.plain_interval or step >= self.total:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_print = now
            self._printed = True

    def message(self, text: str) -> None:
        """A line of its own (validation results, warnings) without breaking the bar."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + " " * (_terminal_width() - 1) + "\r")
        self.stream.write(text + "\n")
        if self.tty and self._last_line:
            self.stream.write(self._last_line[:_terminal_width() - 1])
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
        elif self._last_line and not self._printed:
            self.stream.write(self._last_line + "\n")
        self.stream.flush()


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 120


def _step(row: dict) -> int | None:
    """The step of a log row, None when it has none (a damaged row)."""
    text = row.get("step") or ""
    return int(text) if text.isascii() and text.isdigit() else None


class MetricsLog:
    """RUN_DIR/log.csv with a fixed header (columns given up front; blank where
    a row has no value) and TensorBoard scalars when tensorboard is installed.

    The file is UTF-8 whatever the locale. On resume at step s, rows after s
    (logged after the last checkpoint of the interrupted run) are dropped, so
    the log matches the resumed run. A log with other columns (settings
    changed) is kept as log.until-<s>.csv, one that is not a readable UTF-8
    CSV file as log.unreadable-<s>.csv (with a warning); a new log starts.
    """

    def __init__(self, run_dir, columns: list[str], resume_step: int | None = None, enabled: bool = True,
                 tensorboard: bool = True):
        self.path = os.path.join(os.fspath(run_dir), "log.csv")
        self.columns = ["step"] + [c for c in columns if c != "step"]
        self.enabled = enabled
        self._writer = None
        self._file = None
        self.tb = None
        if not enabled:
            return
        kept: list[dict] = []
        if resume_step is not None and os.path.isfile(self.path):
            folder = os.path.dirname(self.path)
            try:
                with open(self.path, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    header = reader.fieldnames or []
                    rows = [r for r in reader if _step(r) is not None and _step(r) <= resume_step]
            except (UnicodeDecodeError, csv.Error) as error:
                aside = os.path.join(folder, f"log.unreadable-{resume_step}.csv")
                os.replace(self.path, aside)
                warnings.warn(f"{self.path}: not a readable UTF-8 CSV log ({error}); kept as {aside}, "
                              f"a new log starts", stacklevel=2)
            else:
                if header == self.columns:
                    kept = rows
                else:
                    os.replace(self.path, os.path.join(folder, f"log.until-{resume_step}.csv"))
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._file.flush()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(os.path.dirname(self.path), "tensorboard"),
                                        purge_step=resume_step + 1 if resume_step is not None else None)
            except ImportError:  # tensorboard not installed: CSV only
                self.tb = None

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        unknown = set(values) - set(self.columns)
        if unknown:
            raise KeyError(f"MetricsLog: columns {sorted(unknown)} were not declared")
        row = {"step": step, **{k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in values.items()}}
        self._writer.writerow(row)
        self._file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
