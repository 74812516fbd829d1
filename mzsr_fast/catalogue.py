"""The catalogue of the paper's four models (docs/method.md sections 7-8), without torch.

CATALOGUE is the one table of them: each kind's subsampling, the scales it
serves, the reference's test-time schedule, and what meta-training draws and
validates for it. The trainer's variants, the bundled models
(mzsr_fast.pretrained) and the command line all read it; the command line
builds its parser from it before torch is imported.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelKind", "CATALOGUE", "BUNDLED", "ONE_STEP", "ADAPT_LOSSES", "kind_of", "parse_multiples"]


@dataclass(frozen=True)
class ModelKind:
    """One model of the paper. mode: subsampling of its degradations; scales:
    the integer scales it serves (the first is the one it is validated at);
    schedule: the reference's test-time learning rates per step, the last
    repeating; task_scales: the scales meta-training draws a task's from;
    val_kernels: the presets its training validates on."""

    name: str
    mode: str
    scales: tuple[int, ...]
    schedule: tuple[float, ...]
    task_scales: tuple[float, ...]
    val_kernels: tuple[str, ...]


CATALOGUE = {kind.name: kind for kind in (
    ModelKind("direct_x2", "direct", (2,), (0.02, 0.01, 0.01, 0.01, 0.005), (2.0,), ("g_d_2.0",)),
    ModelKind("bicubic_x2", "bicubic", (2,), (0.01, 0.01, 0.01, 0.001, 0.001), (2.0,), ("g_b_1.3",)),
    ModelKind("direct_x4", "direct", (4,), (0.01, 0.005, 0.005, 0.005, 0.005, 0.001), (4.0,), ("g_d_2.0",)),
    ModelKind("multiscale", "direct", (2, 3, 4), (0.01, 0.01, 0.01, 0.005, 0.005),
              tuple(round(2.0 + 0.2 * i, 1) for i in range(11)), ("g_d_2.0",)),
)}


# A kind's one-step model, KIND_1step: meta-trained for a single test-time step
# (one inner step with its own learned rates). The default model of a kind
# needs about ten steps; with steps=1, the default is its one-step model
# where one is shipped (mzsr_fast.pretrained.default_model).
ONE_STEP = "_1step"
# The names of the bundled models: each kind's default model, then the one-step ones.
BUNDLED = tuple(CATALOGUE) + tuple(name + ONE_STEP for name in CATALOGUE)


# The losses a model's adaptation steps may descend (ModelInfo.adapt_loss; mzsr_fast.losses
# computes them): "l1" is the paper's.
ADAPT_LOSSES = ("l1", "charbonnier", "mse")


def parse_multiples(text: str, name: str, allow_empty: bool = True) -> tuple[float, ...]:
    """The multiples of a step search (ModelInfo.step_search, --step-search)
    from "0.5,1.0,2.0" ("": none, where allowed); name is the source in errors."""
    try:
        multiples = tuple(float(m) for m in text.split(",")) if text or not allow_empty else ()
    except ValueError:
        multiples = (-1.0,)
    if not all(0 < m < float("inf") for m in multiples):
        raise ValueError(f"{name}: expected positive finite multiples of the step separated by commas, got {text!r}")
    return multiples


def kind_of(name: str) -> str:
    """The CATALOGUE key of a bundled model's name."""
    return name.removesuffix(ONE_STEP)
