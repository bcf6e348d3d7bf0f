"""``mmlens explain --data``: kill -9 of the real command and a rerun end with the explanations of one run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmlens.cli.main import main
from mmlens.data.readers import open_reader
from mmlens.errors import MmlensError
from mmlens.runner.explain_data import explain_dataset

DATA = "shapes:test[0:6]"
ARGS = ["--data", DATA, "--model", "tiny-llava", "--method", "attention", "--method", "gradient_x_input",
        "--max-new-tokens", "1", "--shard-size", "2"]


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmlens.cli.main", "explain", *ARGS, "--out", str(out), *extra]


def environment() -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg"}


def listed(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


def contents(folder: Path) -> tuple[dict, dict[str, object], list]:
    """What two runs must share: the manifest less file checksums, every explanation less its timings, the scores."""
    import pyarrow.parquet as pq

    manifest = json.loads((folder / "manifest.json").read_text())
    for record in manifest["shards"]:
        record.pop("files")  # explanation.json and report.html hold timings
    files: dict[str, object] = {}
    for path in sorted((folder / "shards").rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.name == "explanation.json":
            payload = json.loads(path.read_text())
            for method in payload["methods"].values():
                method.pop("milliseconds")
            files[name] = payload
        elif path.name == "scores.safetensors":
            files[name] = path.read_bytes()
    return manifest, files, pq.read_table(folder / "samples.parquet").to_pylist()


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_kill_9_then_the_same_command_ends_with_the_explanations_of_one_run(tiny_llava, tmp_path, capsys):
    out = tmp_path / "explained"
    process = subprocess.Popen(command(out), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and listed(out) < 1:
        time.sleep(0.005)
    assert process.poll() is None, process.stderr.read().decode()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 1 <= listed(out) < 3
    code, stdout, err = run(capsys, *command(out, "--json")[3:])
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["samples"] == 6 and summary["shards"]["total"] == 3 and summary["shards"]["skipped"] >= 1
    reference = tmp_path / "reference"
    explain_dataset(tiny_llava, open_reader(DATA), reference, ["attention", "gradient_x_input"], max_new_tokens=1,
                    shard_size=2)
    assert contents(out) == contents(reference)
    # the index links every sample's report, and every link leads to a file
    index = (out / "index.html").read_text()
    links = re.findall(r'href="(shards/[^"]+/report\.html)"', index)
    assert len(links) == 6 and all((out / link).is_file() for link in links)
    assert all(f"shapes-test-{k}" in index for k in range(6))
    table = contents(out)[2]
    assert len(table) == 12 and {row["method"] for row in table} == {"attention", "gradient_x_input"}
    assert all(0 <= row["image_share"] <= 1 for row in table if row["method"] == "attention")


def test_other_methods_on_a_finished_folder_are_refused(tiny_llava, tmp_path):
    out = tmp_path / "explained"
    explain_dataset(tiny_llava, open_reader("shapes:test[0:1]"), out, ["attention"], max_new_tokens=1, reports=False)
    assert (out / "index.html").is_file() and "explanation.json" in (out / "index.html").read_text()
    with pytest.raises(MmlensError, match="methods") as error:
        explain_dataset(tiny_llava, open_reader("shapes:test[0:1]"), out, ["rollout"], max_new_tokens=1,
                        reports=False)
    assert "\n" not in str(error.value)


def test_single_sample_options_with_data_are_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "explain", "--data", DATA, "--target", "red", "--out", tmp_path / "x")
    assert code == 1
    assert err == ["mmlens: error: --target explain one sample: --data explains each sample's own prompt, images "
                   "and answer"]
    assert not (tmp_path / "x").exists()


def test_a_second_job_on_the_same_folder_is_one_line(tiny_llava, tmp_path):
    import os

    from mmlens.store.writer import _lock

    out = tmp_path / "explained"
    out.mkdir()
    held = _lock(out)  # as a running job holds it
    try:
        with pytest.raises(MmlensError, match="another job is writing"):
            explain_dataset(tiny_llava, open_reader("shapes:test[0:1]"), out, ["attention"], max_new_tokens=1)
    finally:
        os.close(held)
    summary = explain_dataset(tiny_llava, open_reader("shapes:test[0:1]"), out, ["attention"], max_new_tokens=1,
                              reports=False)
    assert summary["samples"] == 1
