"""shapes-llava-caption: the grown tokenizer and embeddings, the recipe end to end, the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import torch

from mmlens.data.captions import CAPTION_PROMPT, NEW_WORDS, make_caption_sample, score_caption
from mmlens.zoo.shapes_llava import build_tokenizer, load_from
from mmlens.zoo.shapes_llava import load as load_shapes
from mmlens.zoo.train.caption import (
    CAPTION_BASE, MAX_NEW_TOKENS, NAME, caption_example, extend_tokenizer, generate_captions, grow_vocabulary, main,
)
from mmlens.zoo.train.finetune import IGNORE, encode_examples


def test_extend_tokenizer_keeps_old_ids() -> None:
    old = build_tokenizer()
    new = extend_tokenizer(old, NEW_WORDS)
    assert len(new) == len(old) + len(NEW_WORDS)
    assert old.get_vocab().items() <= new.get_vocab().items()
    ids = new("a red circle left of a blue square above a cross </s>", add_special_tokens=False)["input_ids"]
    assert new.unk_token_id not in ids and ids[-1] == new.eos_token_id == old.eos_token_id
    assert new.padding_side == "left" and new("x")["input_ids"][0] == new.bos_token_id


def test_grow_vocabulary_keeps_old_rows() -> None:
    model, processor = load_shapes()
    emb, head = model.get_input_embeddings().weight.detach().clone(), model.lm_head.weight.detach().clone()
    processor = grow_vocabulary(model, processor, seed=0)
    n = len(processor.tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == model.lm_head.weight.shape[0] == n == emb.shape[0] + 5
    assert torch.equal(model.get_input_embeddings().weight[: emb.shape[0]], emb)
    assert torch.equal(model.lm_head.weight[: head.shape[0]], head)
    again, p2 = load_shapes()
    grow_vocabulary(again, p2, seed=0)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)  # seeded


def test_caption_example_trains_every_word_and_the_end() -> None:
    ex = caption_example(CAPTION_BASE + 1)
    _, processor = load_shapes()
    processor.tokenizer = extend_tokenizer(processor.tokenizer, NEW_WORDS)
    batch = encode_examples(processor, [ex])
    labels = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    truth = make_caption_sample("train", CAPTION_BASE + 1).answer.split()
    assert processor.tokenizer.convert_ids_to_tokens(labels) == [*truth, "</s>"]
    assert ex.pairs[0][0] == CAPTION_PROMPT


def test_recipe_end_to_end(tmp_path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--steps", "2", "--batch", "2", "--n-caption", "4", "--n-train", "2", "--eval-n", "2",
            "--caption-eval-n", "3", "--work", str(work), "--out", str(out)]
    assert main(argv) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["recipe"] == NAME and log["config"]["steps"] == 2 and log["val_captions"]["n"] == 3
    model, processor = load_from(out)
    assert model.generation_config.max_new_tokens == MAX_NEW_TOKENS
    assert len(processor.tokenizer) == model.lm_head.weight.shape[0]
    captions = generate_captions(model, processor, [np.asarray(make_caption_sample("test", 0).image)])
    assert len(captions) == 1 and "</s>" not in captions[0] and len(captions[0].split()) <= MAX_NEW_TOKENS
    # The second run continues from the first one's weights on fresh caption images.
    again = tmp_path / "again"
    assert main([*argv[:-4], "--work", str(tmp_path / "work2"), "--out", str(again), "--init", str(out),
                 "--first-caption", "4"]) == 0
    log2 = json.loads((again / "train_log.json").read_text())
    assert log2["base"] == str(out) and log2["caption_first_index"] == CAPTION_BASE + 4
    assert len(load_from(again)[1].tokenizer) == len(processor.tokenizer)  # no second growth


def test_shipped_model_captions() -> None:
    import mmlens.zoo

    model, processor = mmlens.zoo.build(NAME)
    samples = [make_caption_sample("test", i) for i in range(20)]
    texts = generate_captions(model, processor, [np.asarray(s.image) for s in samples])
    named = [score_caption(t, s.objects)["all_named"] for t, s in zip(texts, samples)]
    assert np.mean(named) >= 0.8
    assert all(len(t.split()) <= 17 for t in texts)  # ended at </s>, not at the token limit
