"""Images for a prompt without <image> slots go where the model's chat template puts them."""

import logging

import pytest

import mmlens
from mmlens.models.slots import place_images
from tests.conftest import noise_image


@pytest.mark.parametrize("name, expected", [
    ("tiny-llava", "<image>\nwhat colour ?"),            # the template writes "<image>\n" before the text
    ("tiny-qwen2-vl", "<image>what colour ?"),           # its vision markers, read back as <image>
    ("tiny-idefics3", "<image>what colour ?"),
    ("shapes-llava", "<image> what colour ?"),           # no chat template: slots before the text
])
def test_slots_go_where_the_chat_template_puts_images(name, expected):
    model = mmlens.load(name)
    placed, where = place_images("what colour ?", 1, model.processor, model.adapter)
    assert placed == expected
    assert ("no chat template" in where) == (name == "shapes-llava")


def test_a_prompt_in_chat_form_gets_its_images_after_the_turn_marker(tiny_llava):
    placed, where = place_images("USER: what colour ? ASSISTANT:", 2, tiny_llava.processor, tiny_llava.adapter)
    assert placed == "USER: <image>\n<image>\nwhat colour ? ASSISTANT:"
    assert "'USER:'" in where


def test_prepare_places_images_and_says_where_in_one_line(tiny_llava, caplog):
    with caplog.at_level(logging.WARNING, logger="mmlens"):
        batch = tiny_llava.prepare("what colour ?", [noise_image(64, 64)])
    assert batch.prompts == ["<image>\nwhat colour ?"]  # the batch records where the image went
    assert batch.layout.image_positions(0).numel() == 16
    notices = [r.getMessage() for r in caplog.records if r.name == "mmlens"]
    assert len(notices) == 1 and "no <image> slot" in notices[0] and "chat template" in notices[0]
    assert "\n" not in notices[0]


def test_prepare_with_slots_says_nothing(tiny_llava, caplog):
    with caplog.at_level(logging.WARNING, logger="mmlens"):
        tiny_llava.prepare("<image> what colour ?", [noise_image(64, 64)])
    assert not [r for r in caplog.records if r.name == "mmlens"]


def test_a_vision_model_without_images_runs_text_only_and_says_so(tiny_llava, caplog):
    with caplog.at_level(logging.WARNING, logger="mmlens"):
        batch = tiny_llava.prepare("what colour ?")
    assert batch.layout.image_positions(0).numel() == 0
    notices = [r.getMessage() for r in caplog.records if r.name == "mmlens"]
    assert notices == ["no image given: tiny-llava runs text-only"]
