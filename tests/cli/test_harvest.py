"""``mmlens harvest``: kill -9 of the real command and a rerun, the JSON summary, one-line errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmlens.cli.main import main
from mmlens.data.readers import open_reader
from mmlens.store import Store
from mmlens.store import shard as shard_module
from mmlens.store.harvest import harvest

DATA = "shapes:test[0:12]"
ARGS = ["--data", DATA, "--model", "tiny-llava", "--shard-size", "2", "--batch-size", "2", "--sites", "lm.L*.resid"]


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmlens.cli.main", "harvest", *ARGS, "--out", str(out), *extra]


def environment() -> dict[str, str]:
    # one thread, as in the test process: the same kernels, the same bytes
    return {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def listed(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


def contents(folder: Path) -> tuple[dict, dict[str, bytes]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("created", "updated"):
        manifest.pop(key)
    return manifest, {p.relative_to(folder).as_posix(): p.read_bytes()
                      for p in sorted((folder / "shards").rglob("*")) if p.is_file()}


def test_kill_9_of_the_command_then_the_same_command_finishes_the_same_store(tiny_llava, tmp_path, capsys):
    out = tmp_path / "store"
    process = subprocess.Popen(command(out), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and listed(out) < 2:
        time.sleep(0.005)
    assert process.poll() is None, process.stderr.read().decode()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= listed(out) < 6
    # the same command again (in this process: a second interpreter start costs more than the whole test)
    code, stdout, err = run(capsys, *command(out, "--json")[3:])
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["shards"]["total"] == 6 and summary["shards"]["skipped"] >= 2
    assert summary["samples"] == 12 and summary["tokens"] == len(Store.open(out))
    reference = tmp_path / "reference"
    harvest(tiny_llava, open_reader(DATA), reference, "lm.L*.resid", shard_size=2, batch_size=2)
    assert contents(out) == contents(reference)


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_json_summary_and_bad_rows(capsys, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    rows = [{"id": "a", "image": "a.png", "prompt": "<image> what colour ?"},
            {"id": "b", "image": "gone.png", "prompt": "<image> what colour ?"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, "harvest", "--data", tmp_path / "d.jsonl", "--model", "tiny-llava", "--out",
                         tmp_path / "s", "--sites", "lm.L1.resid,lm.embed", "--modalities", "image", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["samples"] == 1 and summary["bad_rows"] == 1 and summary["tokens"] == 16
    assert summary["sites"] == ["lm.L1.resid", "lm.embed"]
    assert err[-1].startswith("1 bad row(s) skipped: see ") and err[-1].endswith("errors.jsonl")
    assert json.loads((tmp_path / "s" / "errors.jsonl").read_text())["id"] == "b"
    code, _, err = run(capsys, "harvest", "--data", tmp_path / "d.jsonl", "--model", "tiny-llava", "--out",
                       tmp_path / "s", "--sites", "lm.L1.resid,lm.embed", "--modalities", "image", "--strict")
    assert code == 0  # finished shards are not read again, so --strict meets no bad row
    code, _, err = run(capsys, "harvest", "--data", tmp_path / "d.jsonl", "--model", "tiny-llava", "--out",
                       tmp_path / "t", "--strict")
    assert code == 1 and len(err) == 1 and "bad row b (row 1)" in err[0]


def test_a_full_disk_is_one_line(capsys, tmp_path, monkeypatch):
    def full(path, array):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(shard_module, "save_array", full)
    code, out, err = run(capsys, "harvest", *ARGS, "--out", tmp_path / "s")
    assert code == 1 and err == [f"mmlens: error: the disk is full at {tmp_path / 's'}: 0 shards are stored; "
                                 "free some space and run the same command again to continue"]


@pytest.mark.parametrize("extra, words", [
    (["--column", "prompt"], "--column takes FIELD=NAME"),
    (["--dtype", "int8"], "unknown dtype 'int8'"),
    (["--sites", "lm.L9.resid"], "out of range"),
    (["--modalities", "audio"], "unknown modality(s) 'audio'"),
])
def test_bad_options_are_one_line(capsys, tmp_path, extra, words):
    code, _, err = run(capsys, "harvest", *ARGS, "--out", tmp_path / "s", *extra)
    assert code == 1 and len(err) == 1 and err[0].startswith("mmlens: error: ") and words in err[0], err
