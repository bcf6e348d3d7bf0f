"""`mmlens explain` on the shipped model, as a newcomer runs it: a one-word answer, what was explained, one image
share, no transformers progress bar."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def run_explain(out: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "mmlens.cli.main", "explain", "--method", "rollout",
                             "--out", str(out), *args], capture_output=True, text=True, timeout=600,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    return result


def test_default_explain_answers_one_word_with_the_reports_image_share(tmp_path):
    result = run_explain(tmp_path / "plain")
    assert "Loading weights" not in result.stderr and "it/s" not in result.stderr
    saved = json.loads((tmp_path / "plain" / "explanation.json").read_text())
    assert saved["answer_tokens"] == ["purple"] and saved["answer"] == saved["model_answer"] == "purple"
    assert saved["teacher_forced"] is False and saved["target"] is None and saved["foil"] is None
    assert re.search(r"^answer\s+purple$", result.stdout, re.MULTILINE), result.stdout
    shown = re.search(r"│ rollout\s+│[^│]+│\s+(\d+)%", result.stdout).group(1)
    share = saved["methods"]["rollout"]["targets"][0]["image_share"]
    assert int(shown) == round(100 * share)  # the terminal's share is the report's and the JSON's
    assert "image share: sum of |score| over image tokens" in " ".join(result.stdout.split())
    page = (tmp_path / "plain" / "report.html").read_text()
    assert f"image 0 · {round(100 * share)}%" in page and "image 1" not in page


def test_explain_with_target_and_foil_says_what_was_explained(tmp_path):
    result = run_explain(tmp_path / "forced", "--target", "red", "--foil", "blue")
    lines = {line.split()[0]: " ".join(line.split()[1:]) for line in result.stdout.splitlines()[:6] if line.strip()}
    assert lines["answer"] == "purple (the model's own)"
    assert lines["target"].startswith("red (teacher-forced") and lines["foil"].startswith("blue")
    assert "why 'red' rather than 'blue'?" in result.stdout
    saved = json.loads((tmp_path / "forced" / "explanation.json").read_text())
    assert (saved["model_answer"], saved["target"], saved["foil"], saved["teacher_forced"]) == \
        ("purple", "red", "blue", True)
