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
