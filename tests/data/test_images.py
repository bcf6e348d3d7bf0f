"""open_image: clear errors for missing, corrupt and huge files."""

import pytest
from PIL import Image

from mmlens.data.images import open_image
from mmlens.errors import MmlensError


def test_opens_and_converts_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (10, 6)).save(path)
    assert open_image(path).mode == "RGB" and open_image(path).size == (10, 6)


def test_missing_file(tmp_path):
    with pytest.raises(MmlensError, match="no such image"):
        open_image(tmp_path / "nope.png")


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.png"
    Image.new("RGB", (32, 32), "red").save(path)
    path.write_bytes(path.read_bytes()[:60])  # truncated
    with pytest.raises(MmlensError, match="corrupt|not an image"):
        open_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(MmlensError, match="not an image"):
        open_image(path)


def test_huge_image_is_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (3000, 3000)).save(path)
    with pytest.raises(MmlensError, match="too large"):
        open_image(path, max_pixels=1_000_000)
