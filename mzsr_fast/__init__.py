"""mzsr_fast: fast zero-shot super-resolution by meta-transfer learning (MZSR).

Images are float RGB tensors in [0, 1], [B, C, H, W] (or [C, H, W]).
The names below are imported on first use (mzsr_fast._lazy): `import mzsr_fast`
and the mzsr-fast command's parser do not import torch.
"""
from ._lazy import lazy_package

__version__ = "0.1.0"

lazy_package(__name__, modules=("io", "maml", "metrics"), names={
    "adapt": "adapt", "adapt_model": "adapt",
    "KernelEstimate": "blind", "estimate_kernel": "blind", "joint_estimate": "blind",
    "PRESETS": "degradation", "Preset": "degradation", "degrade": "degradation", "preset": "degradation",
    "backends": "dispatch", "get_default_backend": "dispatch", "set_default_backend": "dispatch",
    "gaussian_kernel": "gaussian", "sample_kernel_params": "gaussian",
    "MZSRNet": "model", "functional_forward": "model",
    "anisotropic_blur_downsample": "ops.blur_downsample", "blur_downsample": "ops.blur_downsample",
    "sgd_step": "ops.sgd_step", "conv3x3_winograd": "ops.conv3x3_winograd",
    "load_model": "pretrained", "save_model": "pretrained",
    "imresize": "resize",
})

__all__ = [
    "gaussian_kernel", "sample_kernel_params", "preset", "Preset", "PRESETS", "imresize",
    "blur_downsample", "anisotropic_blur_downsample", "degrade", "sgd_step", "MZSRNet", "functional_forward",
    "maml", "adapt", "load_model", "save_model", "backends", "set_default_backend", "get_default_backend",
    "metrics", "io", "estimate_kernel", "KernelEstimate", "adapt_model", "joint_estimate", "conv3x3_winograd",
]
