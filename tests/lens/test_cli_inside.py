"""``mmlens lens`` and ``mmlens trace`` write figures, JSON and an HTML section (run in-process)."""

import json

import typer
from typer.testing import CliRunner

from mmlens.box import Box
from mmlens.cli.inside_options import parse_box
from mmlens.cli.lens import lens
from mmlens.cli.trace import trace

app = typer.Typer()
app.command("lens")(lens)
app.command("trace")(trace)


def test_lens_command_writes_figures_json_and_html(tmp_path):
    result = CliRunner().invoke(app, ["lens", "--model", "tiny-llava", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "lens.json").read_text())
    assert payload["lens"]["layer_names"] == ["embed", "L0", "L1"]
    assert {"image", "object image"} == set(payload["knockout"]["groups"])
    for name in ("lens_words", "lens_emergence", "flow_modalities", "flow_heads", "knockout"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert "data:image/png;base64," in (tmp_path / "lens.html").read_text()


def test_trace_command_writes_one_heatmap_per_component(tmp_path):
    result = CliRunner().invoke(app, ["trace", "--model", "tiny-llava", "--component", "resid",
                                      "--component", "attn", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "trace.json").read_text())
    assert sorted(payload["recovery"]) == ["attn", "resid"]
    assert payload["rows"][0]["group_sizes"][0] > 0  # the drawn example's circle
    assert (tmp_path / "trace_resid.png").exists() and not (tmp_path / "trace_mlp.png").exists()
    assert "causal tracing" in (tmp_path / "trace.html").read_text()


def test_object_box_option_is_a_box():
    assert parse_box("1, 2, 3, 4") == Box(x0=1.0, y0=2.0, x1=3.0, y1=4.0)
