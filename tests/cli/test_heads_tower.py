"""``mmlens heads --tower vision`` and ``--positions`` / ``--box``: grids of the tower's heads, edits at chosen places."""

import json

import pytest

from mmlens.cli.main import main


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from tests.conftest import noise_image

    path = tmp_path_factory.mktemp("heads_tower") / "noise.png"
    noise_image(32, 32).save(path)
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def test_vision_grids_in_a_box(capsys, image, tmp_path):
    out = tmp_path / "vision"
    code, stdout, err = run(capsys, "heads", "-m", "tiny-llava", "-i", image, "-p", "<image> what colour ?",
                            "--tower", "vision", "--box", "0,0,16,16", "--head", "vision.L0.H1", "--head", "L1.H0",
                            "--metric", "logit", "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["tower"] == "vision" and summary["positions"] == "box 0,0,16,16"
    stored = json.loads((out / "heads.json").read_text())["grids"]
    assert stored["patching"]["settings"]["tower"] == "vision" and len(stored["knockout"]["effect"]) == 2
    assert all(v is not None for row in stored["attribution"]["effect"] for v in row)
    page = (out / "heads.html").read_text()
    assert "vision tower" in page and "vision.L0.H1 + vision.L1.H0" in page


def test_lm_grids_at_the_image_tokens(capsys, image, tmp_path):
    code, stdout, err = run(capsys, "heads", "-m", "tiny-llava", "-i", image, "-p", "<image> what colour ?",
                            "--positions", "image", "--method", "knockout", "--out", tmp_path / "lm", "--json")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["positions"] == "image"


@pytest.mark.parametrize("args,message", [
    (["--positions", "0", "--box", "0,0,8,8"], "not both"),
    (["--positions", "image", "--tower", "vision"], "--positions 'image'"),
    (["--box", "8,8,0,0"], "--box"),
    (["--tower", "retina"], "tower"),
])
def test_bad_options_are_one_line(capsys, image, tmp_path, args, message):
    code, _, err = run(capsys, "heads", "-m", "tiny-llava", "-i", image, "-p", "<image> what colour ?",
                       "--out", tmp_path / "bad", *args)
    assert code != 0 and len(err) == 1 and message in err[0], err
