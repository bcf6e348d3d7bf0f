"""``mmlens circuit``: files written, the JSON summary, and one-line errors."""

from __future__ import annotations

import json

import pytest

from mmlens.cli.main import main


def test_circuit_writes_page_figures_and_json(tmp_path, capsys):
    out = tmp_path / "circuit"
    code = main(["circuit", "--model", "tiny-llava", "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("circuit.html", "circuit.json", "circuit_cdt.png", "circuit_graph.png", "circuit_curve.png"):
        assert (out / name).stat().st_size > 500, name
    page = (out / "circuit.html").read_text()
    assert "CD-T" in page and "top edges (EAP)" in page and "data:image/png;base64," in page
    ranking = [row["total"] for row in summary["cdt"]["ranking"]]
    assert ranking == sorted(ranking, key=abs, reverse=True) and len(ranking) == 10  # 2 layers x (4 heads + MLP)
    eap = summary["eap"]
    assert 0 < eap["edges_kept"] <= eap["edges"] and len(eap["top_edges"]) == eap["edges_kept"]
    saved = json.loads((out / "circuit.json").read_text())
    assert len(saved["edge_scores"]) == eap["edges"] and saved["curve"]["recovered"][-1] == pytest.approx(1.0, abs=1e-3)


def test_cdt_alone_from_positions_on_a_text_model(tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["circuit", "--model", "tiny-llama", "--prompt", "a red circle is on the left", "--method", "cdt",
                 "--positions", "2,3", "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cdt"]["source_positions"] == [2, 3] and "eap" not in summary


def test_cdt_with_marginal_norms_and_the_replaced_rest(tmp_path, capsys, tiny_llama):
    from mmlens.circuits import decompose

    prompt = "a red circle is on the left"
    code = main(["circuit", "--model", "tiny-llama", "--prompt", prompt, "--method", "cdt", "--positions", "2,3",
                 "--norms", "marginal", "--rest", "replaced", "--out", str(tmp_path / "c"), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)["cdt"]
    expected = decompose(tiny_llama, tiny_llama.prepare(prompt), [2, 3], norms="marginal", rest="replaced")
    frozen = decompose(tiny_llama, tiny_llama.prepare(prompt), [2, 3])
    assert summary["source_logit"] == pytest.approx(expected.source_logit, abs=1e-5)
    assert abs(summary["source_logit"] - frozen.source_logit) > 1e-3  # the option reached CD-T


@pytest.mark.parametrize("args, words", [
    (["--model", "tiny-llama", "--prompt", "a red circle", "--method", "cdt"], "needs a source"),
    (["--model", "tiny-llama", "--prompt", "a red circle", "--method", "eap"], "corrupts the image"),
    (["--model", "tiny-llava", "--positions", "2,x"], "comma-separated"),
    (["--model", "tiny-llava", "--method", "acdc"], "unknown method"),
    (["--model", "tiny-llava", "--target", "1.5"], "--target"),
    (["--model", "tiny-llava", "--norms", "layer"], "norms"),
    (["--model", "tiny-llava", "--rest", "zero"], "rest"),
    (["--model", "tiny-gpt2"], "LLaMA-style"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, words):
    code = main(["circuit", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()
