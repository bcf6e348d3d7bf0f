"""``mmlens audit select``: files written, text-only rows kept, and one-line errors."""

from __future__ import annotations

import json

import pytest

from mmlens.cli.main import main


def test_select_writes_ids_scores_and_histogram(tmp_path, capsys):
    out = tmp_path / "sel"
    code = main(["audit", "select", "--model", "tiny-llava", "--data", "shapes:val[0:10]", "--keep", "0.3",
                 "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    kept = (out / "kept.txt").read_text().split()
    removed = (out / "removed.txt").read_text().split()
    assert len(kept) == 3 and sorted(kept + removed) == sorted(f"shapes-val-{i}" for i in range(10))
    assert summary["kept"] == 3 and summary["scored"] == 10 and summary["layer"] == 0  # tiny-llava: 2 layers
    assert (out / "redundancy.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["removed"] == 7


def test_rows_without_an_image_are_kept(tmp_path, capsys):
    image = tmp_path / "a.png"
    from mmlens.data.shapes import make_sample
    make_sample("val", 0).image.save(image)
    make_sample("val", 1).image.save(tmp_path / "b.png")
    data = tmp_path / "mixed.jsonl"
    data.write_text('{"id": "i1", "image": "a.png", "prompt": "<image> what colour ?"}\n'
                    '{"id": "t1", "prompt": "what colour is the circle ?"}\n'
                    '{"id": "i2", "image": "b.png", "prompt": "<image> what shape ?"}\n')
    out = tmp_path / "sel"
    code = main(["audit", "select", "--model", "tiny-llava", "--data", str(data), "--keep", "0.5",
                 "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    kept = (out / "kept.txt").read_text().split()
    assert "t1" in kept and len(kept) == 2 and json.loads(capsys.readouterr().out)["text_only"] == 1


@pytest.mark.parametrize("keep", ["0", "1.5", "-0.2"])
def test_keep_outside_zero_one_is_one_line(tmp_path, capsys, keep):
    code = main(["audit", "select", "--model", "tiny-llava", "--data", "shapes:val[0:4]", "--keep", keep,
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--keep" in err[0], err


def test_data_without_images_is_one_line(tmp_path, capsys):
    data = tmp_path / "text.jsonl"
    data.write_text('{"id": "a", "prompt": "what colour is the circle?"}\n{"id": "b", "prompt": "hi"}\n')
    code = main(["audit", "select", "--model", "tiny-llava", "--data", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no images" in err[0], err


def test_text_only_model_is_one_line(tmp_path, capsys):
    code = main(["audit", "select", "--model", "tiny-llama", "--data", "shapes:val[0:4]", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "text-only" in err[0], err
