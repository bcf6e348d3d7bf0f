"""``mmlens serve``: the host check before anything loads, and a real start on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from mmlens.cli.main import main
from mmlens.cli.serve import serve_settings
from mmlens.errors import MmlensError


def test_other_hosts_need_a_token(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    assert capsys.readouterr().err.strip() == ("mmlens: error: --host 0.0.0.0 is reachable from other machines: "
                                               "give --token SECRET too")


def test_settings_warn_off_loopback(capsys):
    settings = serve_settings(host="0.0.0.0", token="long-enough-token", max_upload_mb=1.5, max_pixels=1000,
                              max_waiting=0)
    assert (settings.max_upload_bytes, settings.max_pixels, settings.max_waiting) == (1_500_000, 1000, 0)
    assert "warning:" in capsys.readouterr().err
    with pytest.raises(MmlensError):
        serve_settings(host="127.0.0.1", token=None, max_upload_mb=0, max_pixels=None, max_waiting=1)


def test_serve_starts_and_answers(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mmlens.cli.main", "serve", "--model", "tiny-llava", "--port", str(port),
               "--threads", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/model", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mmlens serve did not answer: {process.communicate(timeout=10)}")
        assert answer.json()["model"] == "tiny-llava"
        assert httpx.get(f"http://127.0.0.1:{port}/ask", timeout=5).status_code == 200
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert f"serving tiny-llava at http://localhost:{port}/" in err
