"""``mmlens audit unlearning`` stopped between audits resumes at the next audit and ends as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmlens.cli.audit_unlearning import audit_unlearning

# shapes-llava audited as if it were an unlearned model: the resuming is under test, not the unlearning
ARGS = dict(n_val=2, n_test=3, audits=["direct", "paraphrase", "noise"], layers=[2], fit_n=4)


class Stop(Exception):
    pass


def written(out: Path) -> dict:
    return {name: (out / name).read_text() for name in ("summary.json", "table.md", "rows/base.json",
                                                         "rows/shapes-llava.json")}


def test_a_run_stopped_between_audits_resumes_and_matches(tmp_path):
    torch.set_num_threads(1)
    audit_unlearning(["shapes-llava"], "shapes-llava", "purple", tmp_path / "whole", **ARGS)
    seen: list[tuple[str, str]] = []

    def stop_at_the_fourth(label: str, audit: str) -> None:
        seen.append((label, audit))
        if len(seen) == 4:
            raise Stop

    with pytest.raises(Stop):
        audit_unlearning(["shapes-llava"], "shapes-llava", "purple", tmp_path / "cut", on_audit=stop_at_the_fourth,
                         **ARGS)
    assert seen == [("base", "direct"), ("base", "paraphrase"), ("base", "noise"), ("shapes-llava", "direct")]
    partial = json.loads((tmp_path / "cut" / "rows" / "shapes-llava.json").read_text())
    assert sorted(partial["audits"]) == ["direct"] and "accuracy" in partial  # kept as it was finished
    rest: list[tuple[str, str]] = []
    audit_unlearning(["shapes-llava"], "shapes-llava", "purple", tmp_path / "cut",
                     on_audit=lambda *done: rest.append(done), **ARGS)
    assert rest == [("shapes-llava", "paraphrase"), ("shapes-llava", "noise")]  # nothing finished is redone
    whole, cut = written(tmp_path / "whole"), written(tmp_path / "cut")
    assert cut == whole


def test_a_row_cut_short_is_redone_not_a_traceback(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "u"
    args = {**ARGS, "audits": ["direct"]}
    first = audit_unlearning(["shapes-llava"], "shapes-llava", "purple", out, **args)
    (out / "rows" / "base.json").write_text('{"args": {"ver')  # as an older mmlens left it when killed mid-write
    redone: list[tuple[str, str]] = []
    assert audit_unlearning(["shapes-llava"], "shapes-llava", "purple", out, on_audit=lambda *d: redone.append(d),
                            **args) == first
    assert redone == [("base", "direct")]
