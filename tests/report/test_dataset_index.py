"""The views of a dataset's explanations: samples.parquet and index.html, rebuilt from the manifest."""

from __future__ import annotations

import pandas

from mmlens.report.dataset_index import COLUMNS, write_index, write_table


def _sample(row: int, correct: bool | None) -> dict:
    return {"sample": row, "sample_id": f"s-{row}", "prompt": "what <colour> ?", "answer": "red", "expected": "red",
            "correct": correct, "folder": f"samples/{row:06d}", "methods": {"attention": {"image_share": 0.25}}}


def test_the_index_lists_finished_samples_escapes_text_and_counts_correct_answers(tmp_path):
    manifest = {"model": {"name": "shapes-llava"}, "methods": ["attention"], "reports": True,
                "shards": [{"id": "a", "samples": [_sample(0, True), _sample(1, False)],
                            "errors": [{"row": 2, "id": "s-2", "reason": "no image"}]}]}
    html = write_index(manifest, tmp_path / "index.html").read_text()
    assert "2 samples explained" in html and "1 of 2" in html and "25%" in html
    assert 'href="samples/000001/report.html"' in html and "1 bad rows skipped" in html
    assert "&lt;colour&gt;" in html and "<colour>" not in html  # prompts are text, never markup
    assert not list(tmp_path.glob("*.tmp"))


def test_the_table_has_every_column_in_order_with_its_type(tmp_path):
    rows = [{"shard": "a", "sample": 3, "sample_id": "s-3", "method": "attention", "image_share": 0.5,
             "correct": True, "top_row": 1, "top_col": 2}]
    frame = pandas.read_parquet(write_table(rows, tmp_path / "samples.parquet"))
    assert list(frame.columns) == list(COLUMNS)
    assert frame.loc[0, "image_share"] == 0.5 and frame.loc[0, "top_col"] == 2 and frame["prompt"].isna().all()
