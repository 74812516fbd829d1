"""read_image / write_image."""
import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from mzsr_fast.io import read_image, write_image


def test_round_trip_png(tmp_path):
    x = torch.round(torch.rand(3, 9, 7) * 255) / 255
    write_image(tmp_path / "a.png", x)
    y = read_image(tmp_path / "a.png")
    assert y.shape == (3, 9, 7) and y.dtype == torch.float32
    torch.testing.assert_close(y, x)
    write_image(tmp_path / "b.bmp", x[None])
    torch.testing.assert_close(read_image(tmp_path / "b.bmp", torch.float64), x.double())


def test_grayscale_palette_and_alpha(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    y = read_image(tmp_path / "g.png")
    assert y.shape == (3, 4, 5) and torch.equal(y[0], y[2])
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (3, 4, 5)
    rgba = np.dstack([np.stack([gray] * 3, -1), np.full((4, 5), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="alpha channel dropped"):
        assert read_image(tmp_path / "a.png").shape == (3, 4, 5)


def test_16_bit(tmp_path):
    values = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    y = read_image(tmp_path / "d.png", torch.float64)
    np.testing.assert_allclose(y[0].numpy(), values / 65535.0)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png: not an image"):
        read_image(tmp_path / "text.png")
    write_image(tmp_path / "full.png", torch.rand(3, 64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png: corrupt or truncated"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(ValueError, match="cannot write"):
        write_image(tmp_path / "x.unknown", torch.rand(3, 4, 4))


def _write_png16(path, array):
    """A 16-bit PNG of array ([H, W, planes] uint16) written with pypng."""
    import png

    height, width, planes = array.shape
    writer = png.Writer(width, height, greyscale=planes in (1, 2), alpha=planes in (2, 4), bitdepth=16)
    with open(path, "wb") as f:
        writer.write(f, array.reshape(height, width * planes))


def test_16_bit_rgb_keeps_16_bits(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    _write_png16(tmp_path / "rgb16.png", values)
    y = read_image(tmp_path / "rgb16.png", torch.float64)
    np.testing.assert_array_equal(y.numpy(), values.transpose(2, 0, 1) / 65535.0)
    rgba = np.dstack([values, np.full((5, 4), 9, np.uint16)])
    _write_png16(tmp_path / "rgba16.png", rgba)
    with pytest.warns(UserWarning, match="alpha channel dropped"):
        assert torch.equal(read_image(tmp_path / "rgba16.png", torch.float64), y)


def test_16_bit_output_round_trip(tmp_path):
    from mzsr_fast.io import bit_depth

    values = np.random.default_rng(1).integers(0, 65536, (3, 6, 5), dtype=np.uint16)
    x = torch.from_numpy(values / 65535.0)
    write_image(tmp_path / "out.png", x, bits=16)
    assert bit_depth(tmp_path / "out.png") == 16
    assert torch.equal(read_image(tmp_path / "out.png", torch.float64), x)
    write_image(tmp_path / "gray.png", x[:1], bits=16)
    assert torch.equal(read_image(tmp_path / "gray.png", torch.float64)[2], x[0])
    write_image(tmp_path / "eight.png", x)
    assert bit_depth(tmp_path / "eight.png") == 8
    with pytest.raises(ValueError, match="out.jpg: 16-bit images are written as PNG only"):
        write_image(tmp_path / "out.jpg", x, bits=16)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    from PIL import ImageOps

    array = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(tmp_path / "o.png", exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    y = read_image(tmp_path / "o.png", torch.float64)
    np.testing.assert_array_equal(y.numpy(), upright.transpose(2, 0, 1) / 255.0)
    assert y.shape[1:] == ((5, 3) if orientation >= 5 else (3, 5))


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # the error comes at twice this
    with pytest.raises(ValueError, match="bomb.png: refused as a possible decompression bomb"):
        read_image(tmp_path / "bomb.png")


def test_write_image_interrupted_in_the_encoder_leaves_the_old_file(tmp_path, monkeypatch):
    """A write stopped inside pillow's encoder (here: Ctrl-C after half a PNG)
    keeps the old file and leaves no temporary one."""
    import os

    write_image(tmp_path / "out.png", torch.zeros(3, 8, 8))
    old = (tmp_path / "out.png").read_bytes()

    def interrupted(image, fp, filename, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n half")
        raise KeyboardInterrupt

    Image.init()
    monkeypatch.setitem(Image.SAVE, "PNG", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", torch.ones(3, 8, 8))
    assert (tmp_path / "out.png").read_bytes() == old and os.listdir(tmp_path) == ["out.png"]


@pytest.mark.parametrize("mode,bits", [("1", 8), ("L", 8), ("LA", 8), ("I;16", 16)])
def test_grayscale_in_grayscale_out(tmp_path, mode, bits):
    """A grey image is read as three equal channels and write_like writes it
    back grey, in its bit depth, with the same values."""
    from mzsr_fast.io import bit_depth, is_grayscale, write_like

    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (5, 6), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (5, 6), dtype=np.uint8), "L").convert(mode)
    image.save(tmp_path / "in.png")
    assert is_grayscale(tmp_path / "in.png") and bit_depth(tmp_path / "in.png") == bits
    with pytest.warns(UserWarning, match="alpha") if mode == "LA" else contextlib.nullcontext():
        x = read_image(tmp_path / "in.png", torch.float64)
    assert x.shape == (3, 5, 6) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    write_like(tmp_path / "out.png", x, tmp_path / "in.png")
    out = Image.open(tmp_path / "out.png")
    assert out.mode == ("I;16" if bits == 16 else "L")
    expected = np.asarray(image.convert("L") if bits == 8 else image)
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_grey_output_is_the_mean_of_the_three_channels(tmp_path):
    from mzsr_fast.io import write_like

    Image.fromarray(np.zeros((2, 2), np.uint8), "L").save(tmp_path / "grey.png")
    x = torch.tensor([0.2, 0.4, 0.9]).view(3, 1, 1).expand(3, 2, 2)
    write_like(tmp_path / "out.png", x, tmp_path / "grey.png")
    assert np.asarray(Image.open(tmp_path / "out.png")).tolist() == [[128, 128], [128, 128]]  # 0.5 * 255


@pytest.mark.parametrize("name,convert", [("p.png", "P"), ("cmyk.tif", "CMYK"), ("cmyk.jpg", "CMYK"),
                                          ("rgb.png", "RGB")])
def test_colour_modes_round_trip_as_rgb(tmp_path, name, convert):
    """Palette and CMYK images are colour: read as RGB, written back as 8-bit RGB."""
    from mzsr_fast.io import bit_depth, is_grayscale, write_like

    rgb = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    source = Image.fromarray(rgb).convert(convert)
    source.save(tmp_path / name, **({"quality": 100} if name.endswith(".jpg") else {}))
    assert not is_grayscale(tmp_path / name) and bit_depth(tmp_path / name) == 8
    x = read_image(tmp_path / name, torch.float64)
    write_like(tmp_path / "out.png", x, tmp_path / name)
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "RGB"
    expected = np.asarray(source.convert("RGB"), np.int16) if convert == "P" else rgb.astype(np.int16)
    assert np.abs(np.asarray(out, np.int16) - expected).max() <= (1 if name.endswith(".jpg") else 0)


@pytest.mark.parametrize("name", ["a.gif", "a.png", "a.webp"])
def test_animated_images_warn_that_only_the_first_frame_is_used(tmp_path, name):
    frames = [Image.fromarray(np.full((6, 6, 3), value, np.uint8)) for value in (10, 200, 90)]
    options = {"lossless": True} if name.endswith(".webp") else {}
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], **options)
    with pytest.warns(UserWarning, match=f"{name}: 3 frames .*only the first is used"):
        x = read_image(tmp_path / name)
    torch.testing.assert_close(x, torch.full((3, 6, 6), 10 / 255))
