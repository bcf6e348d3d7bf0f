"""What every reader shares: checked rows, bad rows reported and skipped, slots counted, images opened."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmlens.data.readers.base import BadRow, Reader, check_slots, images_of, open_row_image
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError

RED = Image.new("RGB", (8, 8), "red")


class ListReader(Reader):
    """Rows from a list; an exception in the list is raised as that row's failure."""

    name = "list"

    def __init__(self, rows: list) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def options(self) -> dict:
        return {"reader": self.name, "n": len(self.rows)}

    def _load(self, index: int) -> Sample:
        row = self.rows[index]
        if isinstance(row, Exception):
            raise row
        return row


def _sample(i: int, prompt: str = "<image> what colour ?", image: Image.Image | None = RED) -> Sample:
    return Sample(id=f"s-{i}", prompt=prompt, image=image)


def test_bad_rows_go_to_on_bad_and_the_rest_are_read_in_order():
    rows = [_sample(0), MmlensError("unreadable"), _sample(2, prompt="no slot here"), _sample(3)]
    seen: list = []
    read = list(ListReader(rows).read(on_bad=lambda index, bad: seen.append((index, bad.reason))))
    assert [index for index, _ in read] == [0, 3]
    assert seen == [(1, "unreadable"), (2, "the prompt has no <image> slot for 1 image")]
    assert [s.id for s in ListReader(rows[:1])] == ["s-0"]
    assert list(ListReader(rows).read(3, 99))[0][0] == 3  # a stop past the end is the end
    with pytest.raises(IndexError):
        ListReader(rows).load(4)


def test_slots_must_match_images():
    check_slots(_sample(0))
    check_slots(_sample(1, prompt="text only", image=None))
    with pytest.raises(BadRow, match="2 <image> slots for 1 image"):
        check_slots(_sample(2, prompt="<image> <image> ?"))
    with pytest.raises(BadRow, match="no prompt"):
        check_slots(_sample(3, prompt="  "))
    several = Sample(id="m", prompt="<image> <image> ?", image=None, meta={"images": [RED, RED]})
    assert len(images_of(several)) == 2 and check_slots(several) is None


def test_row_images_from_bytes_dicts_and_paths_or_one_bad_row(tmp_path):
    buffer = io.BytesIO()
    RED.save(buffer, format="PNG")
    assert open_row_image("r", buffer.getvalue()).size == (8, 8)
    assert open_row_image("r", {"bytes": buffer.getvalue(), "path": None}).mode == "RGB"
    RED.save(tmp_path / "a.png")
    assert open_row_image("r", "a.png", root=tmp_path).size == (8, 8)
    for source, reason in ((b"not an image", "unreadable image bytes"), (None, "no image"), (3, "got int"),
                           ("missing.png", "no such image file")):
        with pytest.raises(BadRow, match=reason) as caught:
            open_row_image("row-7", source, root=tmp_path)
        assert caught.value.to_json()["id"] == "row-7"


def test_equal_options_give_equal_keys():
    assert ListReader([_sample(0)]).key() == ListReader([_sample(1)]).key() != ListReader([]).key()
