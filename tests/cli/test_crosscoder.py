"""``mmlens crosscoder train`` and ``eval``: files, JSON summaries with labels, one-line errors."""

from __future__ import annotations

import json

import pytest

from mmlens.cli.main import main
from tests.sae.conftest import sae_store  # noqa: F401  (the shared store fixture)

TRAIN = ["crosscoder", "train", "--site", "lm.L1.resid", "--k", "4", "--expansion", "2", "--steps", "20",
         "--batch-size", "64", "--lr", "0.003"]


def _run(capsys, args: list[str]) -> tuple[int, dict | None, str]:
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else None), captured.err


def test_train_then_eval(sae_store, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "cc"
    # the same store as both models: a crosscoder of a model with itself
    code, summary, _ = _run(capsys, [*TRAIN, "--a", str(sae_store), "--b", str(sae_store), "--out", str(out), "--json"])
    assert code == 0, _
    assert summary["d_sae"] == 2 * summary["d_in"] and summary["training"]["step"] == 20
    assert (out / "crosscoder.json").is_file() and (out / "crosscoder.safetensors").is_file()
    report = tmp_path / "report.json"
    code, result, _ = _run(capsys, ["crosscoder", "eval", "--crosscoder", str(out), "--top", "3", "--out",
                                    str(report), "--json"])
    assert code == 0
    counts = result["counts"]
    assert counts["shared"] + counts["A-only"] + counts["B-only"] + counts["dead"] == summary["d_sae"]
    assert 0 <= result["fvu"]["A"] < 1 and 3 < result["l0"] < 5  # the calibrated threshold: about k per token
    everything = json.loads(report.read_text())["all"]
    assert len(everything) == summary["d_sae"] and {"delta", "nu_error", "flags"} <= set(everything[0])
    # a model against itself: the two decoders learn alike, so no latent is far from shared
    assert max(abs(row["delta"] - 0.5) for row in everything if row["fires"]) < 0.4


@pytest.mark.parametrize(("extra", "message"), [
    (["--k", "500"], "larger than the number of latents"),
    (["--site", "lm.L9.resid"], "lm.L9.resid"),
])
def test_bad_input_is_one_line(sae_store, tmp_path, capsys, extra, message) -> None:  # noqa: F811
    code, _, err = _run(capsys, [*TRAIN, *extra, "--a", str(sae_store), "--b", str(sae_store), "--out",
                                 str(tmp_path / "x")])
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_eval_without_a_crosscoder_is_one_line(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, ["crosscoder", "eval", "--crosscoder", str(tmp_path)])
    assert code == 1 and "no crosscoder" in err and len(err.strip().splitlines()) == 1
