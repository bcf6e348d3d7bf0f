"""The generic trainer: batches, cached tower features, and exact resumption."""

from __future__ import annotations

import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.zoo.evaluate import encode
from mmlens.zoo.shapes_llava import load
from mmlens.zoo.train.finetune import (
    IGNORE, Example, FinetuneConfig, as_example, checkpoint_path, encode_examples, finetune,
    forward_on_features, order, tower_features,
)

IDS = [f"shapes-train-{95_000_000 + i}" for i in range(6)]


class Killed(RuntimeError):
    pass


def test_encoded_examples_match_the_inference_format() -> None:
    _, processor = load()
    examples = [as_example(i) for i in IDS[:3]]
    batch = encode_examples(processor, examples)
    ref = encode(processor, [e.image for e in examples], [f"{e.pairs[0][0]} {e.pairs[0][1]}" for e in examples])
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    # one label per row, on the last token (the answer)
    assert (batch["labels"] != IGNORE).sum(1).tolist() == [1, 1, 1]
    assert torch.equal(batch["labels"][:, -1], batch["input_ids"][:, -1])


def test_multi_word_answers_label_every_word() -> None:
    _, processor = load()
    ex = Example(as_example(IDS[0]).image, [("<image> what colour is the circle ?", "red circle"),
                                            ("is there a red circle ?", "yes")])
    batch = encode_examples(processor, [ex])
    words = processor.tokenizer.convert_ids_to_tokens(batch["labels"][0][batch["labels"][0] != IGNORE])
    assert words == ["red", "circle", "yes"]


def test_cached_features_give_the_same_logits() -> None:
    model, processor = load()
    batch = encode_examples(processor, [as_example(i) for i in IDS[:2]])
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"]).logits
        fast = forward_on_features(model, batch["input_ids"], batch["attention_mask"],
                                   tower_features(model, batch["pixel_values"]))
    assert torch.allclose(full, fast, atol=1e-5)


def test_order_covers_every_example_once_per_epoch() -> None:
    cfg = FinetuneConfig(batch=4, seed=3)
    seen = torch.tensor([int(i) for s in range(3) for i in order(6, cfg, s)])
    assert sorted(seen[:6].tolist()) == list(range(6)) and sorted(seen[6:12].tolist()) == list(range(6))
    assert order(6, cfg, 1).tolist() == order(6, cfg, 1).tolist()


def test_killed_run_resumes_to_identical_weights(tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = FinetuneConfig(steps=4, batch=2, every=2, lr=1e-3, warmup=1, keep_checkpoints=True, feature_chunk=4)
    straight, processor = load()
    finetune(straight, processor, IDS, cfg, tmp_path / "a", log_every=100)

    def kill(step: int) -> None:
        if step == 2:
            raise Killed

    killed, _ = load()
    with pytest.raises(Killed):
        finetune(killed, processor, IDS, cfg, tmp_path / "b", on_checkpoint=kill, log_every=100)
    resumed, _ = load()  # a fresh process: weights from disk, then the checkpoint
    log = finetune(resumed, processor, IDS, cfg, tmp_path / "b", log_every=100)
    assert log["start_step"] == 2
    a, b = straight.state_dict(), resumed.state_dict()
    changed = any(not torch.equal(a[k], load()[0].state_dict()[k]) for k in ("lm_head.weight",))
    assert changed  # training moved the weights at all
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint_path(tmp_path / "b", 2).is_file() and checkpoint_path(tmp_path / "b", 4).is_file()


def test_resuming_with_another_config_is_refused(tmp_path) -> None:
    model, processor = load()
    finetune(model, processor, IDS[:2], FinetuneConfig(steps=1, batch=1, every=1), tmp_path, log_every=100)
    with pytest.raises(MmlensError, match="another configuration"):
        finetune(model, processor, IDS[:2], FinetuneConfig(steps=2, batch=1, every=1), tmp_path)


def test_bad_inputs_give_one_line_errors() -> None:
    with pytest.raises(MmlensError, match="not a shapes sample id"):
        as_example("cat-1")
    model, processor = load()
    with pytest.raises(MmlensError, match="no training examples"):
        finetune(model, processor, [], FinetuneConfig(), "/tmp/unused")


def test_sequence_mean_weighs_each_sequence_once() -> None:
    from mmlens.zoo.train.finetune import _loss
    logits = torch.randn(3, 6, 9)
    labels = torch.full((3, 6), IGNORE)
    labels[0, 1:5] = torch.tensor([1, 2, 3, 4])  # four answers
    labels[1, 5] = 7  # one answer
    keep = labels != IGNORE  # the third row has none and does not count
    ce = torch.nn.functional.cross_entropy
    per_row = [ce(logits[r][keep[r]], labels[r][keep[r]]) for r in (0, 1)]
    assert torch.allclose(_loss(logits, labels, keep, True), (per_row[0] + per_row[1]) / 2)
    assert torch.allclose(_loss(logits, labels, keep, False), ce(logits[keep], labels[keep]))
    assert not torch.allclose(_loss(logits, labels, keep, True), _loss(logits, labels, keep, False))
