"""``mmlens audit backdoor``: files written, labels scored, and one-line errors."""

from __future__ import annotations

import json

from mmlens.cli.main import main


def test_audit_backdoor_writes_ids_page_and_label_scores(tmp_path, capsys):
    labels = tmp_path / "poison.txt"
    labels.write_text("shapes-val-1\nshapes-val-99\n")
    out = tmp_path / "bye"
    code = main(["audit", "backdoor", "--model", "tiny-llava", "--data", "shapes:val[0:12]", "--out", str(out),
                 "--labels", str(labels), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    kept = (out / "kept.txt").read_text().split()
    removed = (out / "removed.txt").read_text().split()
    assert sorted(kept + removed) == sorted(f"shapes-val-{i}" for i in range(12))
    assert summary["samples"] == 12 and summary["kept"] == len(kept)
    assert summary["labels"]["unknown_labels"] == ["shapes-val-99"]  # reported, not dropped silently
    assert summary["labels"]["poisoned"] == 1
    assert (out / "entropy.png").stat().st_size > 1000 and "BYE" in (out / "index.html").read_text()
    assert json.loads((out / "summary.json").read_text())["units"] == "layers"


def test_audit_data_without_images_is_one_line(tmp_path, capsys):
    data = tmp_path / "text.jsonl"
    data.write_text('{"id": "a", "prompt": "what colour is the circle?"}\n')
    code = main(["audit", "backdoor", "--model", "tiny-llava", "--data", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "image" in err[0], err


def test_audit_text_only_model_is_one_line(tmp_path, capsys):
    code = main(["audit", "backdoor", "--model", "tiny-llama", "--data", "shapes:val[0:4]",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "text-only" in err[0], err


def test_audit_bad_units_is_one_line(tmp_path, capsys):
    code = main(["audit", "backdoor", "--model", "tiny-llava", "--data", "shapes:val[0:4]", "--units", "rows",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--units" in err[0], err
