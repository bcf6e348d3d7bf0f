"""The mmlens command: info output, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
from PIL import Image


def mmlens(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmlens.cli.main", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)


def assert_clean_error(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert words in lines[0]


def test_info_json_describes_model_sites_and_layout():
    result = mmlens("info", "--model", "tiny-llava", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["family"] == "llava" and summary["layers"] == 2
    assert "lm.L1.resid" in summary["sites"] and "projector" in summary["sites"]
    view = summary["layout"]["images"][0]["views"][0]
    assert view["tokens"] == view["grid"][0] * view["grid"][1] == summary["layout"]["tokens"]["image"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    good = folder / "good.png"
    Image.new("RGB", (40, 40), "blue").save(good)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return good, corrupt


def test_errors_are_one_line_with_exit_code_2(files):
    good, corrupt = files
    assert_clean_error(mmlens("info", "-m", "tiny-llava", "-i", str(corrupt), "-p", "<image> hi"), "image")
    assert_clean_error(mmlens("info", "-m", "tiny-llava", "-i", str(good), "-i", str(good), "-p", "<image> hi"),
                       "2 images but only 1")
    assert_clean_error(mmlens("info", "-m", "not-a-model"), "unknown model")
    assert_clean_error(mmlens("info", "-m", "tiny-llava", "-i", "missing.png", "-p", "<image> hi"), "no such image")
