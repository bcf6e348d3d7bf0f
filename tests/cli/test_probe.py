"""``mmlens probe``: probes on a store harvested by ``mmlens harvest``; one-line errors."""

from __future__ import annotations

import json

from tests.cli.test_fingerprint import run


def test_harvest_then_probe(capsys, tmp_path):
    store = tmp_path / "store"
    code, _, err = run(capsys, "harvest", "--data", "shapes:test[0:16]", "--model", "tiny-llava", "--sites",
                       "lm.L*.resid", "--modalities", "image,text", "--out", store, "--json")
    assert code == 0, err
    code, stdout, err = run(capsys, "probe", "--store", store, "--task", "patch-colour", "--task",
                            "object-count-scalar", "--out", tmp_path / "p", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    colour, count = summary["tasks"]
    assert colour["task"] == "patch-colour" and colour["sites"] == ["lm.L0.resid", "lm.L1.resid"]
    assert colour["held_out_samples"] == round(colour["samples"] / 4) and 0 <= colour["best"]["accuracy"] <= 1
    assert count["kind"] == "regress" and count["majority"] is None
    assert (tmp_path / "p" / "probe_accuracy.png").is_file()
    assert json.loads((tmp_path / "p" / "probes.json").read_text())["model"] == "tiny-llava"
    # without --json the table is a result: on stdout, so that `mmlens probe ... > table.txt` keeps it
    code, stdout, err = run(capsys, "probe", "--store", store, "--task", "patch-colour", "--out", tmp_path / "q")
    assert code == 0 and "patch-colour" in stdout and "lm.L0.resid" in stdout, (stdout, err)
    assert not any("patch-colour" in line for line in err), err


def test_bad_input_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "probe", "--store", tmp_path / "nothing", "--out", tmp_path / "p")
    assert code == 1 and err == [f"mmlens: error: --store {tmp_path / 'nothing'}: no such folder "
                                 "(write one with mmlens harvest)"]
