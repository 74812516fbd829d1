"""Reading and writing images as float RGB tensors in [0, 1] (pillow based)."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from . import _checks

__all__ = ["read_image", "write_image", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _to_rgb_array(image: Image.Image, path) -> np.ndarray:
    """[H, W, 3] float64 in [0, 1] from any pillow mode."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        warnings.warn(f"{path}: alpha channel dropped", stacklevel=3)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / peak, 0, 1)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
        return np.repeat(array[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def read_image(path, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Read PNG/JPEG/BMP/TIFF (any pillow mode) as [3, H, W] in [0, 1].

    Grayscale and palette images become RGB, alpha is dropped with a warning,
    16-bit images are scaled by 65535. Raises FileNotFoundError or ValueError
    naming the path for a missing, non-image or truncated file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected an image file")
    try:
        with Image.open(path) as image:
            image.load()
            array = _to_rgb_array(image, path)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file pillow can read") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path}: corrupt or truncated image ({error})") from None
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).to(dtype)


def write_image(path, x: torch.Tensor) -> None:
    """Write x ([3, H, W], [1, H, W] or a batch of one) clipped and rounded to 8 bits.

    The format follows the file extension; the folder must exist.
    """
    x4, _ = _checks.as_batched_image(x, "x")
    if x4.shape[0] != 1 or x4.shape[1] not in (1, 3):
        raise ValueError(f"x: expected one image with 1 or 3 channels, got shape {tuple(x.shape)}")
    array = torch.round(x4[0].detach().double().clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    path = os.fspath(path)
    try:
        image.save(path)
    except (ValueError, KeyError) as error:  # unknown extension
        raise ValueError(f"{path}: cannot write an image with this file name ({error})") from None
