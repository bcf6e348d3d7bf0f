from __future__ import annotations

import pytest

from mmlens.data.readers import BadRow, FolderReader, open_reader
from mmlens.errors import MmlensError


def test_folder_rows_are_sorted_and_prompts_follow_the_template(tmp_path, image_file):
    image_file(tmp_path / "dog" / "b.png", 1)
    image_file(tmp_path / "cat" / "a.png", 2)
    (tmp_path / "notes.txt").write_text("not an image")
    reader = open_reader(tmp_path, prompt="<image> is this a {parent} ? ({stem})")
    assert isinstance(reader, FolderReader)
    samples = list(reader)
    assert [s.id for s in samples] == ["cat/a.png", "dog/b.png"]
    assert samples[0].prompt == "<image> is this a cat ? (a)"
    assert samples[1].image.size == (16, 16)


def test_unreadable_file_is_a_bad_row_and_iteration_goes_on(tmp_path, image_file):
    image_file(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    image_file(tmp_path / "c.png")
    reader = FolderReader(tmp_path)
    bad: list[tuple[int, BadRow]] = []
    ids = [s.id for _, s in reader.read(on_bad=lambda i, row: bad.append((i, row)))]
    assert ids == ["a.png", "c.png"]
    assert [(i, row.row_id) for i, row in bad] == [(1, "b.png")]
    assert "not an image" in bad[0][1].reason


def test_template_without_a_slot_makes_every_row_bad(tmp_path, image_file):
    image_file(tmp_path / "a.png")
    with pytest.raises(BadRow, match="no <image> slot"):
        FolderReader(tmp_path, prompt="describe {name}").load(0)


def test_bad_folder_inputs_are_clear_errors(tmp_path):
    with pytest.raises(MmlensError, match="no image files"):
        FolderReader(tmp_path)
    with pytest.raises(MmlensError, match="not valid"):
        FolderReader(tmp_path, prompt="<image> {nope}")
    with pytest.raises(MmlensError, match="no such dataset"):
        open_reader(tmp_path / "missing")
    with pytest.raises(MmlensError, match="do not apply"):
        open_reader(tmp_path, columns={"prompt": "q"})
