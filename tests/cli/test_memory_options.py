"""``--memory-budget`` and ``--window`` on the commands that stack rows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from mmlens.cli.explain import explain, method_options
from mmlens.cli.lens import lens
from mmlens.cli.trace import trace
from mmlens.errors import MmlensError

app = typer.Typer()
app.command("explain")(explain)
app.command("lens")(lens)
app.command("trace")(trace)


def _numbers(value):
    """Every number in a JSON value, in order."""
    if isinstance(value, dict):
        return [n for key in sorted(value) for n in _numbers(value[key])]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _scores(folder, method):
    saved = json.loads((folder / "explanation.json").read_text())
    targets = saved["methods"][method]["targets"]
    return np.asarray(_numbers([{k: t[k] for k in ("images", "prompt", "image_share")} for t in targets]))


def test_method_options_pass_the_window_to_occlusion_and_the_budget_to_methods_that_stack_rows():
    assert method_options(["occlusion", "rise", "attention"], 2, 1000) == {
        "occlusion": {"window": 2, "memory_budget": 1000}, "rise": {"memory_budget": 1000}}
    assert method_options(["integrated_gradients"], 1, None) == {}


def test_explain_results_do_not_depend_on_the_memory_budget(tmp_path):
    runs = {}
    for name, budget in (("tiny", "200KB"), ("unlimited", "unlimited")):  # 200 KB: one variant a pass
        result = CliRunner().invoke(app, ["explain", "--model", "tiny-llava", "--method", "occlusion", "--window", "2",
                                          "--memory-budget", budget, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        runs[name] = _scores(tmp_path / name, "occlusion")
    assert runs["tiny"].size > 10
    np.testing.assert_allclose(runs["tiny"], runs["unlimited"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("command", ["lens", "trace"])
def test_inside_commands_take_a_memory_budget(tmp_path, command):
    extra = ["--component", "resid"] if command == "trace" else []
    result = CliRunner().invoke(app, [command, "--model", "tiny-llava", "--memory-budget", "unlimited", *extra,
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output


def test_a_budget_too_small_for_one_row_is_one_line_naming_the_smallest(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmlens.cli.main", "explain", "--model", "tiny-llava",
                             "--method", "integrated_gradients", "--memory-budget", "1KB", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "too small for one row of integrated gradients: it needs at least" in lines[0]
    assert not (tmp_path / "x").exists()


def test_a_budget_that_is_not_a_size_is_refused_before_the_model_loads(tmp_path):
    result = CliRunner().invoke(app, ["lens", "--model", "tiny-llava", "--memory-budget", "lots",
                                      "--out", str(tmp_path)])
    assert isinstance(result.exception, MmlensError) and "not a size" in str(result.exception)
