"""Causal tracing says when its numbers mean nothing: a corruption that barely moves the answer, a group no layer
restores."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from mmlens.causal import CausalTrace
from mmlens.cli.trace import _best_table
from mmlens.report.inside import trace_figures


def made_up(p_clean: float, p_corrupt: float, patched: list[list[float]]) -> CausalTrace:
    """A one-row trace of one component over ``len(patched)`` layers and two groups (results are data)."""
    matrix = torch.tensor(patched)[None]
    return CausalTrace(model="m", prompts=["<image> q ?"], answers=["red"], answer_ids=torch.tensor([5]),
                       components=["resid"], groups=["object image", "question"],
                       group_sizes=torch.tensor([[4, 2]]), p_clean=torch.tensor([p_clean]),
                       p_corrupt=torch.tensor([p_corrupt]), p_patched={"resid": matrix},
                       corruption={"kind": "noise"})


def test_a_weak_corruption_is_flagged_and_its_rates_left_out():
    weak = made_up(1.0, 0.999, [[1.0012, 0.998], [1.001, 0.999]])  # "recoveries" of 2.2 and 1.0
    assert weak.weak and weak.warning.startswith("the corruption barely moves the answer")
    assert torch.isnan(weak.meaningful_recovery["resid"]).all()
    assert weak.recovery["resid"][0, 0] == pytest.approx(2.2, rel=1e-3)  # the raw number stays available
    assert weak.strongest("resid") == [(None, pytest.approx(math.nan, nan_ok=True))] * 2
    payload = json.loads(json.dumps(weak.to_json()))  # strict JSON: no NaN
    assert payload["weak_corruption"] and payload["warning"] == weak.warning
    assert payload["recovery"]["resid"] == [[None, None], [None, None]]
    assert all(row["layer"] is None for row in payload["strongest"]["resid"])
    assert {tuple(row[2:]) for row in _best_table(weak)["rows"]} == {("—", "—")}
    assert "barely moves" in trace_figures(weak)["resid"].axes[0].get_title()


def test_a_group_no_layer_restores_has_no_strongest_layer():
    strong = made_up(0.9, 0.1, [[0.5, 0.05], [0.8, 0.1]])  # the question group only ever lowers the answer or ties
    assert not strong.weak and strong.warning is None
    (object_layer, object_rate), (question_layer, question_rate) = strong.strongest("resid")
    assert (object_layer, object_rate) == (1, pytest.approx(0.875))
    assert question_layer is None and question_rate == pytest.approx(0.0, abs=1e-6)
    rows = _best_table(strong)["rows"]
    assert rows[0][2:] == ["L1", "0.88"] and rows[1][2] == "none" and "0.00" not in rows[1][3]
    assert json.loads(json.dumps(strong.to_json()))["strongest"]["resid"][1]["layer"] is None


def test_trace_command_warns_on_stderr_and_marks_the_report(tmp_path):
    out = tmp_path / "trace"
    result = subprocess.run([sys.executable, "-m", "mmlens.cli.main", "trace", "--noise", "0", "--component", "resid",
                             "--out", str(out)], capture_output=True, text=True, timeout=600,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "barely moves the answer" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), result.stderr
    assert "Loading weights" not in result.stderr
    payload = json.loads((out / "trace.json").read_text())
    assert payload["weak_corruption"] and payload["recovery"]["resid"][0][0] is None
    page = (out / "trace.html").read_text()
    assert "barely moves the answer" in page and "<td>—</td>" in page
    assert "L0</td><td>0.00" not in page
