"""Tiny random-weight builders: determinism, processing, forward, attentions, generate, padding."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import import_module
from types import ModuleType
from typing import Any

import pytest
import torch
from PIL import Image

from tests.conftest import noise_image

FAMILIES = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "paligemma", "llama"]

# Image tokens expected for a (64x64, 200x120) image; pins each family's layout.
IMAGE_TOKENS = {
    "llava": (16, 16),  # fixed 4x4 patch grid, CLS dropped
    "llava_next": (88, 52),  # base 16 + 2x2 tiles (8x8 + 8 newlines) / unpadded to 4x8 + 4 newlines
    "llava_onevision": (88, 52),
    "qwen2_vl": (4, 15),  # merged grid 2x2 / 3x5
    "qwen2_5_vl": (4, 15),
    "idefics3": (40, 28),  # (3x3 + global) x 4 / (2x3 + global) x 4
    "paligemma": (16, 16),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny matmuls gain nothing from threads, and spinning OpenMP workers make them
    # hundreds of times slower on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def family(name: str) -> ModuleType:
    return import_module(f"mmlens.zoo.tiny.{name}")


def short_prompt(prompt: str) -> str:
    """The family's example prompt with a shorter question, for padding tests."""
    shorter = re.sub(r"What is the colour of the \w+( in the image)?\?", "Describe it.", prompt)
    assert shorter != prompt
    return shorter


def prepare(mod: ModuleType, processor: Any, prompts: list[str], images: list[Image.Image]) -> Any:
    if mod.IMAGE_SLOT is None:
        return processor(prompts, padding=True, return_tensors="pt")
    return processor(images=images, text=prompts, padding=True, return_tensors="pt")


def vocab_size(model: Any) -> int:
    return model.config.get_text_config().vocab_size


@pytest.fixture(scope="module", params=FAMILIES)
def built(request: pytest.FixtureRequest) -> tuple[ModuleType, Any, Any]:
    mod = family(request.param)
    model, processor = mod.build(seed=0)
    return mod, model, processor


def test_module_constants(built: tuple[ModuleType, Any, Any]) -> None:
    mod, _, _ = built
    if mod.IMAGE_SLOT is None:
        assert isinstance(mod.EXAMPLE_PROMPT, str)
    else:
        assert mod.EXAMPLE_PROMPT.count(mod.IMAGE_SLOT) == 1


def test_chat_template_renders_example_prompt(built: tuple[ModuleType, Any, Any]) -> None:
    mod, _, processor = built
    if processor.chat_template is None:  # PaliGemma has none, like the real checkpoints
        pytest.skip("no chat template")
    question = re.search(r"What is the colour of the \w+( in the image)?\?", mod.EXAMPLE_PROMPT).group(0)
    content: Any = question
    if mod.IMAGE_SLOT is not None:
        content = [{"type": "image"}, {"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == mod.EXAMPLE_PROMPT


def test_deterministic_and_tiny(built: tuple[ModuleType, Any, Any]) -> None:
    mod, model, _ = built
    again, _ = mod.build(seed=0)
    other, _ = mod.build(seed=1)
    first, second = model.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], v) for k, v in other.state_dict().items())
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.parametrize("size", [(64, 64), (200, 120)])
def test_forward_and_generate(built: tuple[ModuleType, Any, Any], size: tuple[int, int]) -> None:
    mod, model, processor = built
    inputs = prepare(mod, processor, [mod.EXAMPLE_PROMPT], [noise_image(size[1], size[0])])
    if mod.IMAGE_SLOT is not None:
        n_image = int((inputs["input_ids"] == processor.image_token_id).sum())
        assert n_image == IMAGE_TOKENS[mod.__name__.rsplit(".", 1)[-1]][size != (64, 64)]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], vocab_size(model))
    assert torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_eager_attentions(built: tuple[ModuleType, Any, Any]) -> None:
    mod, _, processor = built
    model, _ = mod.build(seed=0, attn_implementation="eager")
    inputs = prepare(mod, processor, [mod.EXAMPLE_PROMPT], [noise_image(120, 200)])
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    n_layers = model.config.get_text_config().num_hidden_layers
    length = inputs["input_ids"].shape[1]
    assert len(attentions) == n_layers
    for attn in attentions:
        assert attn.shape[0] == 1 and attn.shape[-2:] == (length, length)
        assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-4)


def test_padded_batch(built: tuple[ModuleType, Any, Any]) -> None:
    mod, model, processor = built
    prompts = [mod.EXAMPLE_PROMPT, short_prompt(mod.EXAMPLE_PROMPT)]
    images = [noise_image(64, 64), noise_image(120, 200, seed=1)]
    batch = prepare(mod, processor, prompts, images)
    mask = batch["attention_mask"]
    assert mask.shape[0] == 2 and not bool(mask.all())  # the shorter row is padded
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, mask.shape[1], vocab_size(model))
    assert torch.isfinite(logits).all()
    # Left padding: each row's last logits match the row run on its own.
    for row in range(2):
        alone = prepare(mod, processor, [prompts[row]], [images[row]])
        with torch.no_grad():
            single = model(**alone).logits
        torch.testing.assert_close(logits[row, -1], single[0, -1], atol=1e-4, rtol=1e-4)
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, mask.shape[1] + 3)
