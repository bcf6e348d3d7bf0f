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


@pytest.mark.parametrize("source", ["http://example.com/cat.png", "https://example.com/a/cat.jpg"])
def test_urls_are_not_fetched(source):
    from pathlib import Path

    for given in (source, Path(source)):  # a CLI Path collapses "//": the message restores it
        with pytest.raises(MmlensError, match="URLs are not fetched; download the image first") as error:
            open_image(given)
        assert source in str(error.value)


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(MmlensError, match="is a folder"):
        open_image(tmp_path)


def test_resized_to_says_so_in_one_line(caplog):
    import logging

    from mmlens.data.images import resized_to

    with caplog.at_level(logging.WARNING, logger="mmlens"):
        same = resized_to(Image.new("RGB", (8, 6)), (8, 6), "--counterfactual")
        resized = resized_to(Image.new("RGB", (80, 60)), (40, 40), "--counterfactual")
    assert same.size == (8, 6) and resized.size == (40, 40)
    assert [r.getMessage() for r in caplog.records] == [
        "--counterfactual is 80x60 pixels, the first image 40x40: resized it to 40x40"]


def test_arrays_and_tensors_open_as_rgb_images() -> None:
    import numpy as np
    import torch

    pixels = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(open_image(pixels)), pixels)
    # torch's channels-first floats in [0, 1] read as 0..255
    assert np.array_equal(np.asarray(open_image(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)), pixels)
    assert open_image(np.zeros((6, 10))).size == (10, 6)  # grey
    for bad, match in [(np.zeros((2, 6, 10, 3)), "give several images as a list"), (np.zeros((6, 10, 5)), "shape"),
                       (np.array([[np.nan]]), "NaN"), (np.array([["a"]]), "holds numbers"), (3.5, "got float")]:
        with pytest.raises(MmlensError, match=match):
            open_image(bad)
