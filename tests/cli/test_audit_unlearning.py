"""``mmlens audit unlearning``: the table, figure and rows written, resuming, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

import mmlens
from mmlens.audit.unlearning_methods import save_unlearned
from mmlens.cli.audit_unlearning import recovery_table
from mmlens.cli.main import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """shapes-llava saved as if unlearned with "gd" (no training: the command's plumbing is under test)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models") / "gd-run"
    return save_unlearned(mmlens.load("shapes-llava"), folder, {"method": "gd"})


def test_audit_unlearning_writes_table_figure_and_rows(saved, tmp_path, capsys):
    out = tmp_path / "u"
    args = ["audit", "unlearning", "--model", str(saved), "--base", "shapes-llava", "--forget", "purple",
            "--out", str(out), "--n-val", "2", "--n-test", "3", "--audits", "direct,few-shot,steering",
            "--layers", "2", "--fit-n", "6", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["table"]) == ["base", "gd"]  # labelled by the method in unlearning.json
    assert list(summary["table"]["gd"]) == ["direct", "few-shot", "steering"]
    assert summary["table"]["base"]["direct"] == 1.0  # the fact is known before unlearning
    row = json.loads((out / "rows" / "gd.json").read_text())
    assert row["audits"]["steering"]["n_variants"] == 2 * 2 * 4 and row["audits"]["steering"]["n_test"] == [3, 3]
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| model | forget acc %") and len(table) == 4
    assert (out / "recovery.png").stat().st_size > 1000 and "recovery" in (out / "index.html").read_text()
    assert "src='data:image/png;base64," in (out / "index.html").read_text()  # the page stands alone
    stamp = (out / "rows" / "gd.json").stat().st_mtime_ns
    assert main(args) == 0  # a second run reuses the finished rows
    capsys.readouterr()
    assert (out / "rows" / "gd.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("extra, needle", [(["--forget", "pink"], "--forget"), (["--n-val", "1"], "--n-val"),
                                           (["--model", "tiny-llama"], "text-only"),
                                           (["--audits", "direct,vibes"], "vibes"), (["--layers", "a"], "--layers")])
def test_audit_unlearning_bad_input_is_one_line(tmp_path, capsys, extra, needle):
    code = main(["audit", "unlearning", "--out", str(tmp_path / "o"), "--n-test", "2", "--n-val", "2"] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and needle in err[0], err


def test_recovery_table_formats_percent_and_interval():
    row = {"accuracy": {"forget_acc": 0.05, "retain_acc": 0.98},
           "audits": {"noise": {"recovery": 0.25, "ci95": [0.1, 0.4]}}}
    assert recovery_table({"npo": row}, ["noise"]).splitlines()[2] == "| npo | 5.0 | 98.0 | 25 [10, 40] |"
