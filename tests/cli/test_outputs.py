"""Output folders through the command line: --out checked first, runs never mix, manifests, --json, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mmlens
from mmlens.cli.main import main
from mmlens.report.output import MANIFEST, read_manifest
from tests.cli.test_main import CTRL_C_EXIT_CODES, ctrl_c_reaches_the_child

OUT_COMMANDS = ["explain", "lens", "trace", "neurons", "demo", "heads", "circuit"]
FAST = {  # small runs of every command on the tiny LLaVA
    "info": ["info", "-m", "tiny-llava"],
    "explain": ["explain", "-m", "tiny-llava", "--method", "rollout"],
    "demo": ["demo", "-m", "tiny-llava"],
    "lens": ["lens", "-m", "tiny-llava"],
    "trace": ["trace", "-m", "tiny-llava", "--component", "resid"],
    "neurons": ["neurons", "-m", "tiny-llava", "-n", "1", "--top", "2", "--domains"],
    "heads": ["heads", "-m", "tiny-llava", "--method", "knockout"],
    "circuit": ["circuit", "-m", "tiny-llava"],
}
KINDS = {"explain": "explanation", "demo": "explanation", "lens": "lens", "trace": "trace", "neurons": "neurons",
         "heads": "heads", "circuit": "circuit"}


def run(capfd, *args: str) -> tuple[int, str, str]:
    """``mmlens ARGS`` in process; stdout and stderr as the file descriptors saw them."""
    code = main(list(args))
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, out: str, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1 and lines[0].startswith("mmlens: error: "), (code, out, err)
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the --out checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(mmlens.zoo, "build", refuse)


# --- --out is checked before the model loads ---------------------------------------------------------------------

@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_out_is_checked_before_the_model_loads(command, tmp_path, no_model, capfd):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.png").write_bytes(b"old")
    for out, words in [(a_file, "is a file, not a folder"), (a_file / "sub", "is a file, not a folder"),
                       (Path("/proc/mmlens-x"), "cannot write in /proc"),
                       (full, "is not empty; give --overwrite")]:
        line = one_error_line(*run(capfd, command, "--out", str(out)))
        assert words in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "notes.txt"]


# --- runs never mix ----------------------------------------------------------------------------------------------

def test_a_second_run_is_refused_unless_overwrite(tmp_path, capfd):
    out = tmp_path / "lens"
    assert run(capfd, *FAST["lens"], "--out", str(out))[0] == 0
    (out / "stale.png").write_bytes(b"from some other run")
    assert "not empty" in one_error_line(*run(capfd, *FAST["lens"], "--out", str(out)))
    code, _, err = run(capfd, *FAST["lens"], "--out", str(out), "--overwrite")
    assert code == 0, err
    assert not (out / "stale.png").exists() and (out / "lens.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lens"]  # nothing left beside it


def test_demo_replaces_its_own_folder_only(tmp_path, capfd):
    out = tmp_path / "demo"
    for _ in range(2):  # make demo, twice
        code, _, err = run(capfd, *FAST["demo"], "--out", str(out))
        assert code == 0, err
    assert read_manifest(out)["command"] == "demo"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert "not empty" in one_error_line(*run(capfd, *FAST["demo"], "--out", str(mine)))
    assert (mine / "thesis.tex").read_text() == "precious"


# --- --json: stdout holds JSON only; every folder has a manifest and loads back ----------------------------------

@pytest.mark.parametrize("command", list(FAST))
def test_json_stdout_is_json_only_and_the_folder_loads_back(command, tmp_path, capfd):
    out = tmp_path / command
    args = FAST[command] + (["--out", str(out)] if command != "info" else [])
    code, stdout, stderr = run(capfd, *args, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)  # the whole of stdout
    if command == "info":
        assert summary["model"] == "tiny-llava"
        return
    assert summary["out"] == str(out) and Path(summary["report"]).is_file()
    manifest = read_manifest(out)
    assert manifest["command"] == command and manifest["parameters"]["as_json"] is True
    assert manifest["model"]["name"] == "tiny-llava" and len(manifest["model"]["weights_sha256"]) == 64
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {MANIFEST}
    stored = mmlens.load_result(out)
    assert stored.kind == KINDS[command] and stored.schema_version == 1
    for path in out.iterdir():  # .safetensors too
        assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask(), path
    if command == "neurons":  # the domain neurons are printed (on stderr under --json) and on the page
        assert "domain-specific neurons" in stderr and set(summary["domains"]) == set(summary["domain_neurons"])
        assert ("no neuron is domain-specific here" in stderr) == ("domain_warning" in summary)
        page = (out / "neurons.html").read_text()
        assert "domain-specific neurons" in page and page.count("data:image/png;base64,") == 2
        assert set(stored.neuron_sets) == {"neurons_modality", "neurons_domain"}


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- Ctrl-C mid-run ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, working", [
    (["trace"], b"tracing"),  # the shipped model: tracing takes seconds
    (["neurons"], b"scoring neurons by modality"),
])
def test_ctrl_c_mid_run_leaves_no_folder(args, working, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # live progress
    env.pop("MMLENS_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "mmlens.cli.main", *args, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=ctrl_c_reaches_the_child)
    seen = bytearray()

    def read() -> None:
        for chunk in iter(lambda: os.read(process.stderr.fileno(), 4096), b""):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while working not in seen and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert working in seen and process.poll() is None, bytes(seen[-2000:])
        process.send_signal(signal.SIGINT)
        process.wait(timeout=300)
        reader.join(timeout=10)
    finally:
        process.kill()
    stderr = bytes(seen).decode(errors="replace")
    assert process.returncode in CTRL_C_EXIT_CODES, stderr[-2000:]
    assert "mmlens: interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no --out folder, and no partial one beside it
