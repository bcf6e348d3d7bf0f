"""``mmlens fingerprint``: table, figures and JSON for tiny models; one-line errors."""

from __future__ import annotations

import json

from mmlens.cli.main import main


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_writes_json_figures_and_page(capsys, tmp_path):
    out = tmp_path / "fp"
    code, stdout, err = run(capsys, "fingerprint", "--victim", "tiny-llava", "--suspect", "tiny-llava",
                            "--suspect", "tiny-qwen2-vl", "--group", "tiny-qwen2-vl=unrelated", "--n", "8",
                            "--probe-set", "off-task", "--boot", "20", "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    rows = {r["suspect"]: r for r in summary["rows"]}
    assert abs(rows["tiny-llava"]["score"] - 1) < 1e-5
    assert rows["tiny-qwen2-vl"]["group"] == "unrelated" and rows["tiny-qwen2-vl"]["samples"] == 8
    assert rows["tiny-qwen2-vl"]["score"] < 0.99
    stored = json.loads((out / "fingerprint.json").read_text())
    assert len(stored["rows"][1]["matrices"]["rbf"]) == 2  # tiny-llava's 2 decoder layers
    for name in ("scores_off-task.png", "cka_tiny-qwen2-vl_off-task.png", "fingerprint.html", "manifest.json"):
        assert (out / name).is_file()
    page = (out / "fingerprint.html").read_text()  # it stands alone: every figure embedded
    assert page.count("data:image/png;base64,") == len(stored["figures"]) and 'src="scores_' not in page


def test_bad_options_are_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "fingerprint", "--victim", "tiny-llava", "--suspect", "tiny-llava",
                       "--probe-set", "sideways", "--out", tmp_path / "a")
    assert code == 1 and err == ["mmlens: error: unknown --probe-set 'sideways'; choose one of off-task, on-task"]
    code, _, err = run(capsys, "fingerprint", "--victim", "tiny-llava", "--suspect", "tiny-llava", "--n", "2",
                       "--out", tmp_path / "b")
    assert code == 1 and err == ["mmlens: error: a fingerprint needs at least 4 probe samples, got 2"]
    code, _, err = run(capsys, "fingerprint", "--victim", "tiny-llava", "--suspect", "tiny-llava",
                       "--group", "nolabel", "--out", tmp_path / "c")
    assert code == 1 and "--group takes NAME=GROUP" in err[0]
