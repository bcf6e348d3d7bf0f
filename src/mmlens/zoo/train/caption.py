"""Recipe ``shapes-llava-caption``: shapes-llava fine-tuned to describe a scene in a short sentence.

``python -m mmlens.zoo.train --recipe shapes-llava-caption [--steps N] [...]`` (``--help`` lists the flags);
``python -m mmlens.zoo.train.caption [--n 200] [--split test] [--model DIR] [--json]`` scores the greedy
captions of held-out scenes (:func:`caption_scores`).

Starts from the shipped ``shapes-llava``; the tokenizer gains the caption
words (:data:`mmlens.data.captions.NEW_WORDS`, appended after the existing
ids, so every old id keeps its meaning) and the embedding and ``lm_head``
grow by as many rows (transformers' mean resizing: new rows drawn around
the mean of the old ones). The generic trainer
(:func:`mmlens.zoo.train.finetune.finetune`, tower frozen, features cached)
then trains on a mix of caption examples
(``<image> describe the scene ? a red circle left of a blue square </s>``,
images from train index :data:`CAPTION_BASE`) and the same packed shapes
questions the other derivatives use (images from
:data:`~mmlens.zoo.train.derivatives.FT_BASE`), so the question types are
kept. ``--init DIR`` continues from a saved caption model instead (the
shipped weights are a second run of 800 steps from the first, on fresh caption
images: ``--first-caption 16000``; see ``docs/zoo.md``). Generation ends at ``</s>``; ``generation_config.max_new_tokens`` is
:data:`MAX_NEW_TOKENS`.

Example:
    >>> ex = caption_example(CAPTION_BASE)
    >>> ex.pairs[0][1].endswith("</s>")
    True
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from mmlens.data.captions import CAPTION_PROMPT, NEW_WORDS, make_caption_sample, score_caption
from mmlens.zoo.evaluate import accuracy, encode
from mmlens.zoo.shapes_llava import IMAGE_TOKEN, WEIGHTS_DIR, load as load_shapes, load_from
from mmlens.zoo.train.common import _fmt, _log
from mmlens.zoo.train.derivatives import FT_BASE, common_parser, shapes_example
from mmlens.zoo.train.finetune import Example, FinetuneConfig, finetune

NAME = "shapes-llava-caption"
CAPTION_BASE = 96_000_000  # train-split indices of the caption images (no other recipe uses them)
MAX_NEW_TOKENS = 24  # the longest caption (4 objects, 3 relations) is 17 words, then </s>
END = "</s>"


def extend_tokenizer(tokenizer: PreTrainedTokenizerFast, words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A copy of the word-level tokenizer with ``words`` appended to its vocabulary (old ids unchanged).

    Example:
        >>> from mmlens.zoo.shapes_llava import build_tokenizer
        >>> old = build_tokenizer()
        >>> new = extend_tokenizer(old, ["scene"])
        >>> len(new) == len(old) + 1 and new.convert_tokens_to_ids("red") == old.convert_tokens_to_ids("red")
        True
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for word in words:
        vocab.setdefault(word, len(vocab))
    new = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token="<pad>", unk_token="<unk>",
        bos_token="<s>", eos_token=END, extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side="left",
    )
    return new


def grow_vocabulary(model, processor, words: Sequence[str] = NEW_WORDS, seed: int = 0):
    """Add ``words`` to the processor's tokenizer and grow the embedding and ``lm_head`` to match.

    Returns the processor (its tokenizer replaced). Seeded: the new rows are
    drawn from ``seed``.

    Example:
        >>> model, processor = load_shapes()
        >>> processor = grow_vocabulary(model, processor)
        >>> model.lm_head.weight.shape[0] == len(processor.tokenizer)
        True
    """
    processor.tokenizer = extend_tokenizer(processor.tokenizer, words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=True)
    return processor


def caption_example(index: int) -> Example:
    """Train image ``index`` with its caption as the answer, ended by ``</s>``.

    Example:
        >>> caption_example(CAPTION_BASE).pairs[0][0] == CAPTION_PROMPT
        True
    """
    s = make_caption_sample("train", index)
    return Example(np.asarray(s.image), [(CAPTION_PROMPT, f"{s.answer} {END}")], s.id, ["caption"])


@torch.no_grad()
def generate_captions(model, processor, images: Sequence[np.ndarray], batch_size: int = 100) -> list[str]:
    """Greedy captions of 64 x 64 uint8 images, up to ``</s>`` (not included).

    Example:
        >>> model, processor = load()  # doctest: +SKIP
        >>> generate_captions(model, processor, [np.asarray(make_caption_sample("test", 0).image)])  # doctest: +SKIP
        ['a yellow cross below a green cross']
    """
    tok = processor.tokenizer
    out: list[str] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        batch = encode(processor, chunk, [CAPTION_PROMPT] * len(chunk))
        ids = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for row in ids[:, batch["input_ids"].shape[1]:].tolist():
            words = tok.convert_ids_to_tokens(row)
            out.append(" ".join(words[:words.index(END)] if END in words else words))
    return out


def caption_scores(model, processor, n: int = 200, split: str = "test") -> dict:
    """Greedy captions of ``n`` held-out scenes scored against the ground truth.

    ``all_named``: share of captions naming every object's colour and shape
    (the target); ``exact``: exactly the ground-truth caption; ``hallucinated``:
    share with a (colour, shape) not in the scene; ``by_objects``: ``all_named``
    per object count.

    Example:
        >>> caption_scores(*load(), n=10)["all_named"] > 0.5  # doctest: +SKIP
        True
    """
    samples = [make_caption_sample(split, i) for i in range(n)]
    texts = generate_captions(model, processor, [np.asarray(s.image) for s in samples])
    scores = [score_caption(t, s.objects) for t, s in zip(texts, samples)]
    by: dict[str, list[bool]] = {}
    for s, sc in zip(samples, scores):
        by.setdefault(str(len(s.objects)), []).append(bool(sc["all_named"]))
    return {
        "n": n, "split": split,
        "all_named": float(np.mean([sc["all_named"] for sc in scores])),
        "exact": float(np.mean([sc["exact"] for sc in scores])),
        "hallucinated": float(np.mean([sc["hallucinated"] > 0 for sc in scores])),
        "by_objects": {k: round(float(np.mean(v)), 4) for k, v in sorted(by.items())},
        "examples": [{"id": s.id, "truth": s.answer, "generated": t} for s, t in zip(samples[:5], texts[:5])],
    }


def load(attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
         device: str | torch.device | None = None):
    """The shipped ``shapes-llava-caption`` and its processor (tokenizer with the caption words).

    Example:
        >>> model, processor = load()  # doctest: +SKIP
    """
    return load_from(WEIGHTS_DIR / NAME, attn_implementation, dtype, device)


def main(argv: Sequence[str]) -> int:
    """``--recipe shapes-llava-caption``: fine-tune, evaluate on validation, save weights and ``train_log.json``."""
    p = common_parser("caption", steps=1000, lr=1e-3)
    p.prog = f"python -m mmlens.zoo.train --recipe {NAME}"
    p.set_defaults(work=Path(p.get_default("work")).parent / NAME, out=WEIGHTS_DIR / NAME, n_train=8000)
    p.add_argument("--n-caption", type=int, default=16000, help="distinct caption images")
    p.add_argument("--caption-eval-n", type=int, default=200, help="validation captions in the log")
    p.add_argument("--first-caption", type=int, default=0, help="caption images start at CAPTION_BASE + this")
    p.add_argument("--init", type=Path, default=None,
                   help="continue from a saved caption model (its tokenizer already has the caption words)")
    a = p.parse_args(list(argv))
    torch.set_num_threads(a.threads)
    t0 = time.time()
    if a.init is None:
        model, processor = load_shapes()
        processor = grow_vocabulary(model, processor, seed=a.seed)
    else:
        model, processor = load_from(a.init)
    first = CAPTION_BASE + a.first_caption
    examples = [caption_example(first + k) for k in range(a.n_caption)]
    examples += [shapes_example(FT_BASE + k, a.pack) for k in range(a.n_train)]
    cfg = FinetuneConfig(seed=a.seed, steps=a.steps, batch=a.batch, lr=a.lr)
    log = finetune(model, processor, examples, cfg, a.work)
    log.update(recipe=NAME, base=str(a.init or "shapes-llava"), new_words=list(NEW_WORDS), caption_first_index=first,
               n_caption=a.n_caption, qa_first_index=FT_BASE, n_train=a.n_train, pack=a.pack,
               wall_seconds=round(time.time() - t0, 1))
    log["val_accuracy"] = accuracy(model, processor, n=a.eval_n, split="val")
    _log(f"validation accuracy {_fmt(log['val_accuracy'])}")
    log["val_captions"] = caption_scores(model, processor, n=a.caption_eval_n, split="val")
    _log(f"validation captions: all named {log['val_captions']['all_named']:.3f}, "
         f"exact {log['val_captions']['exact']:.3f}")
    a.out.mkdir(parents=True, exist_ok=True)
    model.generation_config.max_new_tokens = MAX_NEW_TOKENS
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.save_pretrained(a.out)
    processor.save_pretrained(a.out)
    (a.out / "train_log.json").write_text(json.dumps(log, indent=1))
    _log(f"saved to {a.out} in {(time.time() - t0) / 60:.1f} min")
    return 0


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``python -m mmlens.zoo.train.caption``: held-out caption scores of the shipped (or a saved) model."""
    p = argparse.ArgumentParser(prog="python -m mmlens.zoo.train.caption", description=evaluate_main.__doc__)
    p.add_argument("--model", type=Path, default=WEIGHTS_DIR / NAME, help="a saved caption model directory")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, processor = load_from(a.model)
    scores = caption_scores(model, processor, n=a.n, split=a.split)
    print(f"{a.split} captions of {a.model.name} (n={a.n}): every object named {scores['all_named']:.1%}, "
          f"exact {scores['exact']:.1%}, with a hallucinated object {scores['hallucinated']:.1%}")
    print("every object named, by object count: "
          + ", ".join(f"{k}: {v:.1%}" for k, v in scores["by_objects"].items()))
    for ex in scores["examples"]:
        print(f"  {ex['id']}: {ex['generated']!r} (truth {ex['truth']!r})")
    if a.json:
        print(json.dumps({k: v for k, v in scores.items() if k != "examples"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(evaluate_main())
