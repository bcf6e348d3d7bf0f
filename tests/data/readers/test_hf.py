from __future__ import annotations

import pytest

from mmlens.data.readers import HFReader, open_reader
from mmlens.errors import MmlensError

import datasets  # noqa: E402  (a dev dependency: a missing one fails, never skips)


def _rows(tmp_path, image_file):
    image_file(tmp_path / "a.png", 1)
    return {"qid": ["x1", "x2", "x3"], "picture": [str(tmp_path / "a.png"), str(tmp_path / "gone.png"),
                                                    str(tmp_path / "a.png")],
            "question": ["<image> what ?", "<image> where ?", "<image> who ?"], "answer": ["red", "left", None]}


def test_saved_dataset_with_mapped_columns(tmp_path, image_file):
    features = datasets.Features({"qid": datasets.Value("string"), "picture": datasets.Value("string"),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string")})
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(_rows(tmp_path, image_file), features=features).save_to_disk(str(saved))
    reader = open_reader(saved, columns={"id": "qid", "image": "picture", "prompt": "question"})
    assert isinstance(reader, HFReader) and reader.kind == "disk" and len(reader) == 3
    bad = []
    samples = [s for _, s in reader.read(on_bad=lambda i, row: bad.append(row.row_id))]
    assert [s.id for s in samples] == ["x1", "x3"] and bad == ["x2"]
    assert samples[0].answer == "red" and samples[1].answer is None
    assert reader.options()["columns"] == {"id": "qid", "image": "picture", "prompt": "question"}


def test_parquet_with_image_bytes(tmp_path, image_file):
    from datasets import Image as ImageFeature

    rows = _rows(tmp_path, image_file)
    data = datasets.Dataset.from_dict({"question": rows["question"][:1], "image": rows["picture"][:1]})
    data = data.cast_column("image", ImageFeature())  # stored as bytes in the parquet file
    data.to_parquet(str(tmp_path / "d.parquet"))
    reader = open_reader(tmp_path / "d.parquet", columns={"prompt": "question"})
    assert reader.kind == "parquet"
    sample = reader.load(0)
    assert sample.id == "row-0" and sample.image.size == (16, 16)


def test_missing_columns_are_named(tmp_path, image_file):
    datasets.Dataset.from_dict(_rows(tmp_path, image_file)).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(MmlensError, match="--column prompt=NAME"):
        HFReader(tmp_path / "s")
    with pytest.raises(MmlensError, match="unknown field"):
        HFReader(tmp_path / "s", columns={"question": "prompt"})
