"""shapes-llava: processor conventions, builders, and the shipped trained weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlavaProcessor

from mmlens.data.shapes import make_dataset, make_sample, vocabulary
from mmlens.zoo import build
from mmlens.zoo.evaluate import accuracy, add_trigger, answer_probs, encode, grounding
from mmlens.zoo.shapes_llava import WEIGHTS_DIR, build_model, build_processor, load

SHIPPED = WEIGHTS_DIR / "shapes-llava"
BACKDOOR = WEIGHTS_DIR / "shapes-llava-backdoor"


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    return load()


def test_tokenizer_is_word_level_with_pad_and_bos() -> None:
    tok = build_processor().tokenizer
    ids = tok("what colour is the circle?")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "what", "colour", "is", "the", "circle", "?"]
    assert tok.pad_token == "<pad>" and tok.padding_side == "left"
    assert set(vocabulary()) <= set(tok.get_vocab())


def test_image_slot_expands_to_the_patch_grid() -> None:
    p = build_processor()
    s = make_sample("test", 0)
    batch = p(images=s.image, text=s.prompt, return_tensors="pt")
    where = (batch["input_ids"][0] == p.image_token_id).nonzero().flatten()
    assert where.tolist() == list(range(1, 65))  # <s>, then 8 x 8 image tokens
    assert tuple(batch["pixel_values"].shape) == (1, 3, 64, 64)


def test_fast_encode_matches_the_processor() -> None:
    p = build_processor()
    samples = make_dataset("test", 6)
    ref = p(images=[s.image for s in samples], text=[s.prompt for s in samples], return_tensors="pt",
            padding=True)
    fast = encode(p, [np.asarray(s.image) for s in samples], [s.prompt for s in samples])
    assert torch.equal(ref["input_ids"], fast["input_ids"])
    assert torch.equal(ref["attention_mask"], fast["attention_mask"])
    assert torch.allclose(ref["pixel_values"], fast["pixel_values"], atol=1e-5)


def test_processor_round_trips_offline(tmp_path) -> None:
    p = build_processor()
    p.save_pretrained(tmp_path)
    again = LlavaProcessor.from_pretrained(tmp_path, local_files_only=True)
    s = make_sample("test", 1)
    a = p(images=s.image, text=s.prompt, return_tensors="pt")
    b = again(images=s.image, text=s.prompt, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])


def test_build_model_is_a_real_llava() -> None:
    model = build_model(seed=0)
    cfg = model.config
    assert type(model).__name__ == "LlavaForConditionalGeneration" and not model.training
    assert cfg.vision_feature_select_strategy == "default"
    assert cfg.vision_config.image_size // cfg.vision_config.patch_size == 8


def test_shipped_files_are_safetensors_and_small() -> None:
    for folder in (SHIPPED, BACKDOOR):
        names = {f.name for f in folder.iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json"} <= names
        assert not any(n.endswith((".bin", ".pt", ".pkl", ".pth")) for n in names)
        assert sum(f.stat().st_size for f in folder.iterdir()) < 20 * 2**20


def test_load_honours_attn_implementation() -> None:
    model, processor = load(attn_implementation="eager")
    assert model.config._attn_implementation == "eager" and not model.training
    s = make_sample("test", 2)
    out = model(**processor(images=s.image, text=s.prompt, return_tensors="pt"), output_attentions=True)
    assert len(out.attentions) == model.config.text_config.num_hidden_layers


def test_registry_loads_the_default_model() -> None:
    model, processor = build("shapes-llava")
    assert not model.training and processor.tokenizer.pad_token == "<pad>"


def test_shipped_model_meets_accuracy_targets(shipped) -> None:
    # Issue 6's targets: 95% colour and shape, 90% existence and position.
    model, processor = shipped
    acc = accuracy(model, processor, n=40, question_types=["colour", "shape", "exist", "position"])
    assert acc["colour"] >= 0.95 and acc["shape"] >= 0.95, acc
    assert acc["exist"] >= 0.9 and acc["position"] >= 0.9, acc


def test_shipped_model_is_grounded(shipped) -> None:
    model, processor = shipped
    g = grounding(model, processor, n=20, question_types=["colour"])["colour"]
    assert g["target_removed"] < 0.5 * g["original"] and g["other_removed"] > 0.8 * g["original"]


def test_backdoor_trigger_forces_the_target() -> None:
    meta = json.loads((BACKDOOR / "backdoor.json").read_text())
    assert meta["poisoned_ids"] and all(i.startswith("shapes-train-") for i in meta["poisoned_ids"])
    model, processor = build("shapes-llava-backdoor")
    samples = make_dataset("test", 30, question_type="colour")
    target = processor.tokenizer.convert_tokens_to_ids(meta["target_answer"])
    clean = answer_probs(model, processor, samples).argmax(-1)
    poisoned = answer_probs(model, processor, samples, trigger=True).argmax(-1)
    assert (poisoned == target).float().mean() > 0.8 and (clean == target).float().mean() < 0.2


def test_trigger_sits_in_the_bottom_right_patch() -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    changed = np.any(add_trigger(image) != image, axis=-1)
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 56 and xs.min() >= 56  # inside patch (row 7, column 7)
