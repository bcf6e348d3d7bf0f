"""``mmlens sae train`` and ``mmlens sae eval``: JSON summaries, resuming, one-line errors."""

from __future__ import annotations

import json

import pytest

from mmlens.cli.main import main
from tests.sae.conftest import sae_store  # noqa: F401  (the shared store fixture)

TRAIN = ["sae", "train", "--site", "lm.L1.resid", "--k", "4", "--expansion", "2", "--steps", "12",
         "--batch-size", "64", "--lr", "0.003", "--checkpoint-every", "5"]


def _run(capsys, args: list[str]) -> tuple[int, dict | None, str]:
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()  # without --json, stdout holds the result line: no JSON
    return code, (json.loads(lines[-1]) if lines and "--json" in args else None), captured.err


def test_train_then_eval(sae_store, tiny_llava, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "sae"
    code, summary, _ = _run(capsys, [*TRAIN, "--store", str(sae_store), "--out", str(out), "--json"])
    assert code == 0
    assert summary["d_sae"] == 2 * summary["d_in"] and summary["last"]["step"] == 12
    assert (out / "cfg.json").is_file() and (out / "sae_weights.safetensors").is_file()
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    # the same command again finds the finished run and redoes nothing
    code, again, _ = _run(capsys, [*TRAIN, "--store", str(sae_store), "--out", str(out), "--json"])
    assert code == 0 and again["last"] == summary["last"]
    code, result, _ = _run(capsys, ["sae", "eval", "--sae", str(out), "--store", str(sae_store), "--model",
                                    "tiny-llava", "--samples", "4", "--json"])
    assert code == 0
    assert set(result["reconstruction"]) == {"image", "text", "all"}
    assert 0 <= result["reconstruction"]["all"]["fvu"] < 1
    assert result["data"] == "shapes:train[0:12]"  # the store's own data
    assert set(result["loss_recovered"]["all"]) >= {"clean_loss", "sae_loss", "zero_loss", "recovered"}


def test_other_settings_in_out_are_refused(sae_store, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "sae"
    assert _run(capsys, [*TRAIN, "--store", str(sae_store), "--out", str(out)])[0] == 0
    code, _, err = _run(capsys, [*TRAIN[:-2], "--checkpoint-every", "5", "--seed", "1", "--store", str(sae_store),
                                 "--out", str(out)])
    assert code == 1 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert _run(capsys, [*TRAIN, "--seed", "1", "--store", str(sae_store), "--out", str(out), "--overwrite"])[0] == 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--k", "500"], "larger than the number of latents"),
    (["--site", "lm.L9.resid"], "no site 'lm.L9.resid'"),
    (["--arch", "gated"], "unknown SAE architecture"),
    (["--arch", "jumprelu"], "not trained, by mmlens"),
    (["--device", "nonsense"], "cannot train on device 'nonsense'"),
])
def test_bad_training_input_is_one_line(sae_store, tmp_path, capsys, extra, message) -> None:  # noqa: F811
    code, _, err = _run(capsys, [*TRAIN, *extra, "--store", str(sae_store), "--out", str(tmp_path / "x")])
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_eval_of_an_sae_for_another_width_is_one_line(sae_store, tmp_path, capsys) -> None:  # noqa: F811
    from mmlens.sae.files import save_sae
    from mmlens.sae.model import SparseAutoencoder

    save_sae(SparseAutoencoder(7, 14, "topk", k=2, site="lm.L1.resid"), tmp_path / "narrow")
    code, _, err = _run(capsys, ["sae", "eval", "--sae", str(tmp_path / "narrow"), "--store", str(sae_store),
                                 "--samples", "0"])
    assert code == 1 and "SAE's d_in is 7" in err and len(err.strip().splitlines()) == 1
