"""Reading and writing images as float RGB tensors in [0, 1].

Pillow reads every format; 16-bit colour PNGs, which pillow reduces to 8 bits,
are read (and 16-bit outputs written) with pypng. Files are written atomically
(mzsr_fast._files): a writer stopped at any moment leaves the old file or none.

Grayscale images are read as three equal channels, so the model (trained on
RGB) sees a grey photo as it would see it in colour, and every RGB input takes
exactly the same path. write_like writes an output in the kind of its input:
for a grey input, one channel, the mean of the model's three outputs (which
differ slightly: the network does not treat its channels alike), in the
input's bit depth.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import png
import torch
from PIL import Image, UnidentifiedImageError

from . import _checks
from ._files import atomic_open

__all__ = ["read_image", "write_image", "write_like", "bit_depth", "is_grayscale", "check_image",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _png_header(path: str) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None for another format."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _is_16_bit_colour_png(path: str) -> bool:
    """True for the 16-bit PNGs pillow would reduce to 8 bits: RGB, RGBA, grey + alpha."""
    header = _png_header(path)
    return header is not None and header[0] == 16 and header[1] in (2, 4, 6)


def bit_depth(path) -> int:
    """16 for a 16-bit image (PNG of any colour type, pillow's I;16 modes), else 8."""
    path = os.fspath(path)
    header = _png_header(path)
    if header is not None:
        return 16 if header[0] == 16 else 8
    with Image.open(path) as image:
        return 16 if image.mode.startswith("I;16") else 8


def is_grayscale(path) -> bool:
    """True for an image with one grey channel, alpha or not (PNG colour types 0
    and 4; pillow's 1, L, LA, I, I;16 and F modes); palette, CMYK and the rest are colour."""
    path = os.fspath(path)
    header = _png_header(path)
    if header is not None:
        return header[1] in (0, 4)
    with Image.open(path) as image:
        return image.mode in _GRAY_MODES


def _read_16_bit_png(path: str) -> np.ndarray:
    """[H, W, planes] float64 in [0, 1] of a 16-bit PNG, through pypng (values / 65535)."""
    width, height, rows, info = png.Reader(filename=path).read()
    array = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    return array / 65535.0


def _to_rgb_array(image: Image.Image, path: str) -> np.ndarray:
    """[H, W, 3] float64 in [0, 1] from any pillow mode (16-bit colour PNGs through pypng)."""
    if _is_16_bit_colour_png(path):
        array = _read_16_bit_png(path)
        if array.shape[2] in (2, 4):
            warnings.warn(f"{path}: alpha channel dropped", stacklevel=3)
            array = array[..., :-1]
        return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
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


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """[H, W, C] turned upright as the EXIF orientation tag (1..8) says
    (the transposes of PIL.ImageOps.exif_transpose)."""
    turns = {
        2: lambda a: a[:, ::-1],                      # mirrored left-right
        3: lambda a: a[::-1, ::-1],                   # rotated 180
        4: lambda a: a[::-1],                         # mirrored top-bottom
        5: lambda a: a.transpose(1, 0, 2),            # transposed
        6: lambda a: np.rot90(a, -1),                 # rotated 90 clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
        8: lambda a: np.rot90(a, 1),                  # rotated 90 counter-clockwise
    }
    return turns[orientation](array) if orientation in turns else array


@contextlib.contextmanager
def _opened(path: str):
    """Image.open(path) as a context; its errors, and those of decoding inside
    the context, become FileNotFoundError or ValueError naming the path."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected an image file")
    try:
        with Image.open(path) as image:
            yield image
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file pillow can read") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: refused as a possible decompression bomb ({error})") from None
    except (OSError, SyntaxError, png.Error) as error:
        raise ValueError(f"{path}: corrupt or truncated image ({error})") from None


def check_image(path) -> tuple[int, int]:
    """Open the image's header only (fast): FileNotFoundError or ValueError
    naming the path for a missing, non-image or decompression-bomb file.
    Damage past the header shows only when read_image decodes the file.
    Returns the (height, width) read_image will give (EXIF orientation applied)."""
    with _opened(os.fspath(path)) as image:
        width, height = image.size
        turned = image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn swaps the sides
    return (width, height) if turned else (height, width)


def read_image(path, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Read PNG/JPEG/BMP/TIFF (any pillow mode) as [3, H, W] in [0, 1], upright.

    Grayscale, palette and CMYK images become RGB, alpha is dropped with a
    warning, as are the frames after the first of an animated or multi-page
    file, 16-bit images (grey and colour PNGs) are scaled by 65535, and the
    EXIF orientation is applied. Raises FileNotFoundError or ValueError naming the
    path for a missing, non-image, truncated or decompression-bomb file.
    """
    path = os.fspath(path)
    with _opened(path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            warnings.warn(f"{path}: {frames} frames (animated or multi-page); only the first is used", stacklevel=2)
        image.load()
        array = _to_rgb_array(image, path)
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    array = _orient(array, orientation)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).to(dtype)


# Rows of an image converted to integers at a time: bounds the float64
# intermediates of a large image (a 48-megapixel output is 1.2 GB in float64).
QUANTISE_ELEMENTS = 1 << 22


def _quantised(x: torch.Tensor, bits: int) -> np.ndarray:
    """x [C, H, W] clipped to [0, 1] and rounded to `bits` bits (in float64, a
    band of rows at a time): [H, W, C] uint8 or uint16."""
    peak, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    channels, height, width = x.shape
    out = np.empty((height, width, channels), dtype)
    band = max(1, QUANTISE_ELEMENTS // (channels * width))
    for top in range(0, height, band):
        rows = torch.round(x[:, top:top + band].detach().double().clamp(0, 1) * peak)
        out[top:top + band] = rows.to(torch.int32).permute(1, 2, 0).cpu().numpy()
    return out


def write_image(path, x: torch.Tensor, bits: int = 8) -> None:
    """Write x ([3, H, W], [1, H, W] or a batch of one) clipped and rounded to
    `bits` (8, or 16 for a .png file) bits per channel.

    The format follows the file extension; the folder must exist. The file
    is replaced atomically: an error or an interruption leaves the old one.
    """
    x4, _ = _checks.as_batched_image(x, "x")
    if x4.shape[0] != 1 or x4.shape[1] not in (1, 3):
        raise ValueError(f"x: expected one image with 1 or 3 channels, got shape {tuple(x.shape)}")
    path = os.fspath(path)
    if bits not in (8, 16):
        raise ValueError(f"bits: expected 8 or 16, got {bits!r}")
    if bits == 16 and not path.lower().endswith(".png"):
        raise ValueError(f"{path}: 16-bit images are written as PNG only, expected a .png file name")
    array = _quantised(x4[0], bits)  # [H, W, C]
    height, width, channels = array.shape
    if bits == 16:
        writer = png.Writer(width, height, greyscale=channels == 1, bitdepth=16)
        with atomic_open(path) as f:
            writer.write(f, array.reshape(height, width * channels))
        return
    extension = os.path.splitext(path)[1].lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        raise ValueError(f"{path}: cannot write an image with this file name (unknown extension {extension!r})")
    image = Image.fromarray(array[..., 0] if channels == 1 else array)
    try:
        with atomic_open(path) as f:
            image.save(f, format=image_format)
    except (ValueError, KeyError) as error:  # a format that cannot hold this image
        raise ValueError(f"{path}: cannot write an image with this file name ({error})") from None


def write_like(path, x: torch.Tensor, source) -> None:
    """Write x ([3, H, W] or a batch of one) as write_image does, in the kind of
    image the file `source` is: its bit depth (bit_depth) and, when it is
    grayscale (is_grayscale), one channel, the mean of x's three."""
    if is_grayscale(source):
        x = x.mean(dim=-3, keepdim=True)
    write_image(path, x, bits=bit_depth(source))
