"""``mmlens heads``: the three grids, their page and files, --json, --tower vision, --positions / --box, and one-line
errors (run in-process)."""

import json

import pytest
from mmlens.cli.main import main


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from tests.conftest import noise_image

    path = tmp_path_factory.mktemp("heads") / "noise.png"
    noise_image(40, 40).save(path)
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def test_heads_writes_three_grids_a_page_and_json(capsys, image, tmp_path):
    out = tmp_path / "heads"
    code, stdout, err = run(capsys, "heads", "-m", "tiny-llava", "-i", image, "-p", "<image> what colour ?",
                            "--corrupt", "embeddings", "--head", "L0.H1", "--head", "L1.H2", "--metric", "logit",
                            "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert set(summary["grids"]) == {"knockout", "patching", "attribution"} and summary["metric"] == "logit"
    assert all(summary["grids"][name]["group_effect"] is not None for name in summary["grids"])
    for name in ("heads.json", "heads.html", "heads_knockout.png", "heads_patching.png", "heads_attribution.png",
                 "manifest.json"):
        assert (out / name).is_file(), name
    stored = json.loads((out / "heads.json").read_text())
    assert stored["format"] == "mmlens.Heads"
    effect = stored["grids"]["patching"]["effect"]
    assert len(effect) == 2 and len(effect[0]) == 4 and all(v is not None for row in effect for v in row)
    page = (out / "heads.html").read_text()
    assert page.count("data:image/png;base64") == 3 and "L0.H1 + L1.H2" in page
    assert json.loads((out / "manifest.json").read_text())["result"] == "heads"


def test_knockout_alone_needs_no_image(capsys, tmp_path):
    code, stdout, err = run(capsys, "heads", "-m", "tiny-llama", "-p", "a red circle is", "--method", "knockout",
                            "--ablation", "mean", "--out", tmp_path / "text", "--json")
    assert code == 0, err
    assert list(json.loads(stdout.strip().splitlines()[-1])["grids"]) == ["knockout"]


def test_a_corruption_that_moves_nothing_warns(capsys, image, tmp_path):
    code, stdout, err = run(capsys, "heads", "-m", "tiny-llava", "-i", image, "-p", "<image> what colour ?",
                            "--method", "patching", "--counterfactual", image, "--out", tmp_path / "same", "--json")
    assert code == 0, err
    assert any("barely moves the answer" in line for line in err)
    assert "barely moves the answer" in json.loads(stdout.strip().splitlines()[-1])["warning"]


@pytest.mark.parametrize("args, words", [
    (["--head", "L0.H7"], "lm layer 0 has 4 heads"),
    (["--head", "L5.H0"], "the model has 2 lm layers"),
    (["--head", "first"], "name heads like L1.H2"),
    (["--method", "everything"], "unknown method(s) 'everything'"),
    (["--direction", "up"], "unknown direction 'up'"),
    (["--positions", "0", "--box", "0,0,8,8"], "not both"),
    (["--positions", "image", "--tower", "vision"], "--positions 'image'"),
    (["--box", "8,8,0,0"], "--box"),
    (["--tower", "retina"], "unknown tower 'retina'"),
    (["--tower", "vision", "--head", "lm.L0.H1"], "is a lm head"),
])
def test_bad_input_is_one_line(capsys, image, tmp_path, args, words):
    code, _, err = run(capsys, "heads", "-m", "tiny-llava", "-i", image, "-p", "<image> what colour ?", *args,
                       "--out", tmp_path / "bad")
    assert code == 1 and len(err) == 1 and err[0].startswith("mmlens: error: ") and words in err[0], err


def test_patching_without_an_image_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "heads", "-m", "tiny-llama", "-p", "a red circle is", "--out", tmp_path / "x")
    assert code == 1 and len(err) == 1 and "corrupt the image" in err[0], err


# ---- --tower vision, --positions and --box ----------------------------------
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
