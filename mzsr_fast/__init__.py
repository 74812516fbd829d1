"""mzsr_fast: fast zero-shot super-resolution by meta-transfer learning (MZSR).

Images are float RGB tensors in [0, 1], [B, C, H, W] (or [C, H, W]).
"""
from . import io, maml, metrics
from .adapt import adapt
from .blind import KernelEstimate, estimate_kernel
from .degradation import PRESETS, Preset, degrade, preset
from .dispatch import backends, get_default_backend, set_default_backend
from .gaussian import gaussian_kernel, sample_kernel_params
from .model import MZSRNet, functional_forward
from .ops.blur_downsample import anisotropic_blur_downsample, blur_downsample
from .ops.sgd_step import sgd_step
from .pretrained import load_model, save_model
from .resize import imresize

__version__ = "0.1.0"

__all__ = [
    "gaussian_kernel", "sample_kernel_params", "preset", "Preset", "PRESETS", "imresize",
    "blur_downsample", "anisotropic_blur_downsample", "degrade", "sgd_step", "MZSRNet", "functional_forward",
    "maml", "adapt", "load_model", "save_model", "backends", "set_default_backend", "get_default_backend",
    "metrics", "io", "estimate_kernel", "KernelEstimate",
]
