from __future__ import annotations

import json

from mmlens.box import Box
from mmlens.data.readers import JsonlReader, images_of, open_reader


def test_jsonl_rows_with_one_or_several_images_answers_and_boxes(tmp_path, image_file):
    image_file(tmp_path / "img" / "a.png", 1)
    image_file(tmp_path / "img" / "b.png", 2)
    rows = [
        {"id": "q1", "image": "img/a.png", "prompt": "<image> what ?", "answer": "red", "box": [1, 2, 5, 6]},
        {"id": "q2", "images": ["img/a.png", "img/b.png"], "prompt": "<image> and <image> differ ?"},
        {"id": "q3", "image": "img/missing.png", "prompt": "<image> what ?"},
        {"id": "q4", "image": "img/a.png", "prompt": "no slot here"},
        {"id": "q5", "prompt": "<image> no image"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "{broken")
    lines.insert(1, "")  # blank lines are not rows
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    reader = open_reader(tmp_path / "q.jsonl")
    assert isinstance(reader, JsonlReader) and len(reader) == 6
    bad = {}
    samples = [s for _, s in reader.read(on_bad=lambda i, row: bad.__setitem__(row.row_id, row.reason))]
    assert [s.id for s in samples] == ["q1", "q2"]
    assert samples[0].answer == "red" and samples[0].meta["box"] == Box(1, 2, 5, 6)
    assert len(images_of(samples[1])) == 2 and samples[1].answer is None
    assert set(bad) == {"line-4", "q3", "q4", "q5"}
    assert "not JSON" in bad["line-4"] and "no such image file" in bad["q3"]
    assert "no <image> slot" in bad["q4"] and bad["q5"] == "no image"


def test_a_row_loads_without_reading_the_rows_before_it(tmp_path, image_file):
    image_file(tmp_path / "a.png")
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "image": "a.png", "prompt": f"<image> {i}"})
                                              + "\n" for i in range(50)))
    reader = JsonlReader(tmp_path / "q.jsonl")
    assert reader.load(37).prompt == "<image> 37"
    assert [i for i, _ in reader.read(48)] == [48, 49]
