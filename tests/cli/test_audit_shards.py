"""``mmlens audit backdoor`` and ``audit select`` stopped mid-run continue with the same command and end alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmlens.cli.audit import audit_backdoor
from mmlens.cli.audit_select import audit_select
from mmlens.errors import MmlensError

DATA = "shapes:val[0:12]"
OPTIONS = {"model": "tiny-llava", "batch_size": 2, "shard_size": 4}  # 3 shards of 2 batches


class Stop(Exception):
    pass


def stop_after(n: int, seen: list[str]):
    def on_shard(shard_id: str) -> None:
        seen.append(shard_id)
        if len(seen) == n:
            raise Stop(shard_id)

    return on_shard


def outputs(out: Path, arrays: str) -> dict:
    """What a run leaves that must not depend on whether it was interrupted."""
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / arrays) as saved:
        stored = {k: saved[k].tolist() for k in saved.files}
    return {"kept": (out / "kept.txt").read_text(), "removed": (out / "removed.txt").read_text(),
            "summary": summary, "arrays": stored}


@pytest.mark.parametrize("audit, arrays", [(audit_backdoor, "entropy.npz"), (audit_select, "redundancy.npz")])
def test_a_run_stopped_after_a_shard_resumes_to_the_same_result(tmp_path, audit, arrays):
    audit(DATA, tmp_path / "whole", **OPTIONS)
    seen: list[str] = []
    with pytest.raises(Stop):
        audit(DATA, tmp_path / "cut", on_shard=stop_after(1, seen), **OPTIONS)
    manifest = json.loads((tmp_path / "cut" / "scores" / "manifest.json").read_text())
    assert [r["id"] for r in manifest["shards"]] == seen  # the finished shard was kept
    assert not (tmp_path / "cut" / "kept.txt").exists()
    rest: list[str] = []
    audit(DATA, tmp_path / "cut", on_shard=rest.append, **OPTIONS)
    assert len(rest) == 2 and seen[0] not in rest  # only the unfinished shards were scored
    assert outputs(tmp_path / "cut", arrays) == outputs(tmp_path / "whole", arrays)


def test_a_finished_run_reruns_without_scoring_and_a_damaged_shard_is_redone(tmp_path):
    out = tmp_path / "sel"
    first = audit_select(DATA, out, **OPTIONS)
    again: list[str] = []
    assert audit_select(DATA, out, on_shard=again.append, **OPTIONS) == first and again == []
    shard = sorted((out / "scores" / "shards").iterdir())[1]
    (shard / "arrays.safetensors").write_bytes(b"cut short")
    redone: list[str] = []
    assert audit_select(DATA, out, on_shard=redone.append, **OPTIONS) == first and redone == [shard.name]


def test_other_options_in_the_same_folder_are_one_line(tmp_path):
    out = tmp_path / "bye"
    audit_backdoor(DATA, out, **OPTIONS)
    with pytest.raises(MmlensError, match="batch_size.*use another --out") as error:
        audit_backdoor(DATA, out, **{**OPTIONS, "batch_size": 3})
    assert "\n" not in str(error.value)
    with pytest.raises(MmlensError, match="data"):
        audit_backdoor("shapes:val[0:8]", out, **OPTIONS)


def test_a_killed_process_resumes(tmp_path):
    """SIGKILL after the first shard (no cleanup runs); the same call again ends as an uninterrupted run."""
    out = tmp_path / "killed"
    script = ("import os, signal; from pathlib import Path; from mmlens.cli.audit_select import audit_select; "
              f"audit_select({DATA!r}, Path({str(out)!r}), model='tiny-llava', batch_size=2, shard_size=4, "
              "on_shard=lambda _: os.kill(os.getpid(), signal.SIGKILL))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert len(json.loads((out / "scores" / "manifest.json").read_text())["shards"]) == 1
    rest: list[str] = []
    audit_select(DATA, out, on_shard=rest.append, **OPTIONS)
    audit_select(DATA, tmp_path / "whole", **OPTIONS)
    assert len(rest) == 2
    assert outputs(out, "redundancy.npz") == outputs(tmp_path / "whole", "redundancy.npz")
