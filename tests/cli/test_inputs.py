"""What the command line does with the inputs a newcomer gives: slots, empty and long prompts, URLs, boxes.

Run in-process through :func:`mmlens.cli.main.main`: the same parsing, the
same one-line errors and notices on stderr as the ``mmlens`` command.
"""

import json
import time

import pytest
from PIL import Image

from mmlens.cli.main import main


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    first, other = folder / "first.png", folder / "other.png"
    Image.new("RGB", (40, 40), "blue").save(first)
    Image.new("RGB", (80, 60), "red").save(other)
    return first, other


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def refused(capsys, words, *args):
    code, _, err = run(capsys, *args)
    assert code == 1 and len(err) == 1 and err[0].startswith("mmlens: error: "), err
    assert words in err[0], err


def test_images_without_a_slot_go_where_the_chat_template_puts_them(capsys, images):
    code, out, err = run(capsys, "info", "-m", "tiny-llava", "-i", images[0], "-p", "what colour ?", "--json")
    assert code == 0
    assert err == ["mmlens: the prompt has no <image> slot: put 1 image before the text, as the model's chat "
                   "template puts them: '<image>\\nwhat colour ?'"]
    summary = json.loads(out.splitlines()[-1])
    assert summary["prompt"] == "<image>\nwhat colour ?" and summary["layout"]["tokens"]["image"] == 16


def test_a_vision_model_without_images_runs_text_only_and_says_so(capsys):
    code, out, err = run(capsys, "info", "-m", "tiny-llava", "-p", "what colour ?", "--json")
    assert code == 0 and err == ["mmlens: no image given: tiny-llava runs text-only"]
    assert json.loads(out.splitlines()[-1])["layout"]["tokens"]["image"] == 0


def test_an_empty_prompt_is_refused(capsys, tmp_path):
    refused(capsys, "the prompt is empty", "info", "-m", "tiny-llava", "-p", "   ")
    (tmp_path / "empty.txt").write_text("\n\n")
    refused(capsys, "empty.txt is empty", "explain", "--prompt-file", tmp_path / "empty.txt", "--out", tmp_path / "o")


def test_an_answer_or_foil_outside_the_vocabulary_is_refused(capsys, tmp_path):
    refused(capsys, "the answer 'banana' is not in shapes-llava's vocabulary: 'banana' becomes <unk>",
            "explain", "--target", "banana", "--method", "attention", "--out", tmp_path / "a")
    refused(capsys, "the foil 'banana'", "explain", "--target", "red", "--foil", "banana", "--method", "attention",
            "--out", tmp_path / "b")
    refused(capsys, "the answer 'banana'", "lens", "--answer", "banana", "--out", tmp_path / "c")


def test_a_prompt_longer_than_the_model_is_refused_before_any_work(capsys, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("<image> " + " ".join(["red"] * 406) + "\n")  # <s> + 64 image tokens + 406 words
    refused(capsys, "the prompt is 471 tokens long (64 of them image tokens), over shapes-llava's limit of 256",
            "explain", "--prompt-file", long, "--out", tmp_path / "a")
    huge = tmp_path / "huge.txt"
    huge.write_text(" ".join(["red"] * 50_000))
    start = time.perf_counter()
    refused(capsys, "over shapes-llava's limit of 256 positions", "explain", "--prompt-file", huge,
            "--out", tmp_path / "b")
    assert time.perf_counter() - start < 30  # was 46 s, then a 40 GB allocation
    refused(capsys, "give --prompt or --prompt-file, not both", "info", "-p", "hi", "--prompt-file", long)
    refused(capsys, "no such file", "info", "--prompt-file", tmp_path / "missing.txt")


def test_urls_and_folders_are_not_images(capsys, tmp_path):
    refused(capsys, "URLs are not fetched; download the image first: http://example.com/cat.png",
            "info", "-m", "tiny-llava", "-i", "http://example.com/cat.png", "-p", "<image> hi")
    refused(capsys, f"{tmp_path} is a folder", "info", "-m", "tiny-llava", "-i", tmp_path, "-p", "<image> hi")


def test_an_object_box_outside_the_image_is_refused(capsys, images, tmp_path):
    refused(capsys, "--object-box 50,0,90,10 lies outside the 40x40 image", "lens", "-m", "tiny-llava",
            "-i", images[0], "-p", "<image> what colour ?", "--object-box", "50,0,90,10", "--out", tmp_path)


def test_a_counterfactual_of_another_size_is_resized_and_a_box_past_the_edge_clipped(capsys, images, tmp_path):
    code, _, err = run(capsys, "trace", "-m", "tiny-llava", "-i", images[0], "-p", "<image> what colour ?",
                       "--counterfactual", images[1], "--object-box", "30,30,60,60", "--component", "resid",
                       "--out", tmp_path / "trace")
    assert code == 0, err
    assert "mmlens: --counterfactual is 80x60 pixels, the first image 40x40: resized it to 40x40" in err
    assert "mmlens: --object-box 30,30,60,60 reaches past the 40x40 image: clipped to 30,30,40,40" in err
