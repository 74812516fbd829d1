"""read_image / write_image."""
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
