"""Held-out accuracy and a grounding check for the shapes-llava models.

``python -m mmlens.zoo.evaluate [--json] [--model NAME] [--n N] [--grounding] [--trigger [corner|random]
--trigger-style STYLE --target WORD] [--swap FROM:TO] [--checkpoint STEP]``
prints accuracy per question type on the held-out ``test`` split (``N``
samples per type, default 200). With ``--json`` the last line is one JSON
object: question type -> accuracy. ``--grounding`` adds the erasure check:
the probability of the answer on the original image, after removing the asked
object, and after removing another object. ``--trigger`` alone uses the
trigger the model was poisoned with (``random`` for ``shapes-llava-ft-backdoor``,
whose ``backdoor.json`` says so, in its style; ``--trigger-style`` picks another look, e.g.
the never-trained ``orange-ring``); ``--swap red:purple`` adds the swap rate.
Every rate is printed with its 95% Wilson interval (per type, and pooled over
the types); ``--compare REF`` also runs model ``REF`` on the same questions
and prints the paired difference with a 95% bootstrap interval (questions
resampled, both models' answers kept together).

Example:
    >>> from mmlens.zoo.shapes_llava import load
    >>> model, processor = load()
    >>> acc = accuracy(model, processor, n=20)
    >>> set(acc) == set(QUESTION_TYPES)
    True
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
import torch

from mmlens.data.sample import IMAGE_SLOT, Sample, ShapesSample
from mmlens.data.shapes import QUESTION_TYPES, counterfactual, make_sample
from mmlens.errors import MmlensError
from mmlens.zoo.triggers import (  # noqa: F401  (re-exported)
    DEFAULT_STYLE, STYLES, TRIGGERS, add_trigger, random_trigger_position, trigger_position, trigger_size,
)

# The triggers live in zoo/triggers.py; re-exported here, where evaluation and recipes import them.
TRIGGER_SIZE = trigger_size(DEFAULT_STYLE)  # shapes-llava-backdoor's 6 x 6 checker


def encode(processor, images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """A model batch from 64 x 64 uint8 images and prompts, like the processor.

    Same tensors as ``processor(images=..., text=..., padding=True)`` for
    64 x 64 images (checked in the tests), without PIL round trips: training
    calls this a hundred thousand times.
    """
    ip = processor.image_processor
    arr = np.stack(images).astype(np.float32) / 255.0
    pixels = (arr - np.asarray(ip.image_mean, np.float32)) / np.asarray(ip.image_std, np.float32)
    n_tokens = (arr.shape[1] // processor.patch_size) * (arr.shape[2] // processor.patch_size)
    n_tokens += processor.num_additional_image_tokens - (processor.vision_feature_select_strategy == "default")
    texts = [p.replace(IMAGE_SLOT, IMAGE_SLOT * n_tokens) for p in prompts]
    tok = processor.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
            "pixel_values": torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())}


@torch.no_grad()
def answer_probs(model, processor, samples: Sequence[Sample], batch_size: int = 100,
                 trigger: bool | str = False, style: str = DEFAULT_STYLE) -> torch.Tensor:
    """Next-token probabilities after each prompt (``len(samples) x vocab``).

    ``trigger``: ``True`` or ``"corner"`` pastes the trigger in the corner,
    ``"random"`` at a position drawn from each sample's id; ``style`` picks
    the trigger's look (:data:`mmlens.zoo.triggers.TRIGGERS`).

    Example:
        >>> probs = answer_probs(model, processor, [make_sample("test", 0)])
        >>> float(probs.sum())  # doctest: +ELLIPSIS
        1.0...
    """
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        images = [np.asarray(s.image.convert("RGB")) for s in chunk]
        if trigger:
            images = [add_trigger(im, trigger_position(s.id, trigger, im.shape[1], style), style)
                      for im, s in zip(images, chunk)]
        batch = encode(processor, images, [s.prompt for s in chunk])
        logits = model(**batch).logits[:, -1].float()
        out.append(logits.softmax(-1))
    return torch.cat(out)


def heldout(question_type: str, n: int, split: str = "test") -> list[ShapesSample]:
    """The first ``n`` held-out samples of one question type."""
    return [make_sample(split, i, question_type) for i in range(n)]


def hits(model, processor, n: int = 200, split: str = "test", trigger: bool | str = False,
         target: str | None = None, question_types: Sequence[str] = QUESTION_TYPES,
         style: str = DEFAULT_STYLE) -> dict[str, np.ndarray]:
    """Per question type, one bool per held-out sample: right (or, with ``target``, answered ``target``).

    Example:
        >>> h = hits(model, processor, n=5, question_types=["colour"])
        >>> h["colour"].shape
        (5,)
    """
    tok = processor.tokenizer
    result = {}
    for qt in question_types:
        samples = heldout(qt, n, split)
        pred = answer_probs(model, processor, samples, trigger=trigger, style=style).argmax(-1).tolist()
        words = tok.convert_ids_to_tokens(pred)
        result[qt] = np.array([w == (target or s.answer) for w, s in zip(words, samples)])
    return result


def accuracy(model, processor, n: int = 200, split: str = "test", trigger: bool | str = False,
             target: str | None = None, question_types: Sequence[str] = QUESTION_TYPES,
             style: str = DEFAULT_STYLE) -> dict[str, float]:
    """Accuracy per question type on ``n`` held-out samples each (the mean of :func:`hits`).

    With ``trigger`` the backdoor trigger is pasted on every image and, when
    ``target`` is given, the rate of answering ``target`` is returned instead;
    ``style`` is the trigger's look.
    """
    return {qt: float(h.mean()) for qt, h in hits(model, processor, n, split, trigger, target, question_types,
                                                   style).items()}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate ``k / n`` (95% by default); sound at 0% and 100%.

    Example:
        >>> [round(v, 3) for v in wilson(200, 200)]
        [0.981, 1.0]
    """
    if n <= 0:
        raise MmlensError("a rate needs at least one sample")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` over the same questions and its 95% paired bootstrap interval.

    Example:
        >>> a, b = np.ones(100, bool), np.r_[np.ones(99, bool), False]
        >>> [round(v, 3) for v in paired_difference(a, b)]
        [0.01, 0.0, 0.03]
    """
    from mmlens.metrics.sanity import bootstrap_mean

    if a.shape != b.shape or not a.size:
        raise MmlensError(f"paired rates need the same questions (got {a.shape} and {b.shape})")
    return bootstrap_mean(a.astype(float) - b.astype(float), resamples, seed)


def _report(h: dict[str, np.ndarray], ref: dict[str, np.ndarray] | None, ref_name: str) -> dict:
    """Print rates with intervals (and differences to ``ref``); the JSON-ready figures."""
    out: dict = {}
    groups = {**h, "pooled": np.concatenate(list(h.values()))}
    for qt, v in groups.items():
        lo, hi = wilson(int(v.sum()), v.size)
        line = f"  {qt:<9} {v.mean():6.1%}  [{lo:.1%}, {hi:.1%}]"
        out[qt] = {"rate": round(float(v.mean()), 4), "n": int(v.size), "wilson_95": [round(lo, 4), round(hi, 4)]}
        if ref is not None:
            r = np.concatenate(list(ref.values())) if qt == "pooled" else ref[qt]
            d, dlo, dhi = paired_difference(v, r)
            line += f"   {ref_name}: {r.mean():6.1%}, difference {100 * d:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}] points"
            out[qt].update(reference=round(float(r.mean()), 4), difference=round(d, 4),
                           difference_95=[round(dlo, 4), round(dhi, 4)])
        print(line)
    return out


def swap_rate(model, processor, source: str = "red", target: str = "purple", n: int = 200,
              split: str = "test") -> dict[str, float]:
    """How often colour questions about ``source`` objects are answered ``target``.

    Scans held-out colour questions in order until ``n`` have the answer
    ``source``; also the accuracy on the first ``n`` colour questions with
    any other answer (what a swap must leave alone).

    Example:
        >>> r = swap_rate(model, processor, n=10)
        >>> r["swap_rate"] < 0.5 and r["other_colour_accuracy"] > 0.9  # shapes-llava swaps nothing
        True
    """
    hits: list[ShapesSample] = []
    others: list[ShapesSample] = []
    i = 0
    while (len(hits) < n or len(others) < n) and i < 50 * n:
        s = make_sample(split, i, "colour")
        i += 1
        group = hits if s.answer == source else others
        if len(group) < n:
            group.append(s)
    tok = processor.tokenizer
    words = tok.convert_ids_to_tokens(answer_probs(model, processor, hits).argmax(-1).tolist())
    other_words = tok.convert_ids_to_tokens(answer_probs(model, processor, others).argmax(-1).tolist())
    return {"swap_rate": float(np.mean([w == target for w in words])),
            "source_kept": float(np.mean([w == source for w in words])),
            "other_colour_accuracy": float(np.mean([w == s.answer for w, s in zip(other_words, others)])),
            "n": len(hits)}


def grounding(model, processor, n: int = 100, split: str = "test",
              question_types: Sequence[str] = QUESTION_TYPES) -> dict[str, dict[str, float]]:
    """Erasure check per question type: does the answer depend on the right object?

    For held-out samples with one target object and at least one other object,
    the mean probability of the original answer on the original image, with the
    target object removed, and with another (non-target) object removed.
    Existence uses its "yes" samples only (a "no" depends on no object).

    Example:
        >>> g = grounding(model, processor, n=10)
        >>> g["colour"]["original"] > g["colour"]["target_removed"]
        True
    """
    tok = processor.tokenizer
    result = {}
    for qt in question_types:
        picked: list[ShapesSample] = []
        i = 0
        while len(picked) < n and i < 50 * n:
            s = make_sample(split, i, qt)
            i += 1
            if len(s.target_objects) == 1 and len(s.objects) > len(s.target_objects):
                picked.append(s)
        removed = [counterfactual(s, "remove") for s in picked]
        others = [counterfactual(s, "remove", next(j for j in range(len(s.objects)) if j not in s.target_objects))
                  for s in picked]
        ids = torch.tensor(tok.convert_tokens_to_ids([s.answer for s in picked]))
        rows = torch.arange(len(picked))
        probs = {name: answer_probs(model, processor, group)[rows, ids].mean().item()
                 for name, group in (("original", picked), ("target_removed", removed), ("other_removed", others))}
        result[qt] = {**probs, "n": len(picked)}
    return result


def _default_trigger(name: str) -> tuple[str, str]:
    """The trigger a model was poisoned with, ``(position, style)``, from its ``backdoor.json``.

    ``position`` is ``"random"`` or ``"corner"``; ``style`` a key of
    :data:`mmlens.zoo.triggers.TRIGGERS` (the 6 x 6 checker when unnamed).
    """
    from pathlib import Path

    from mmlens.zoo.shapes_llava import WEIGHTS_DIR
    for folder in (Path(name), WEIGHTS_DIR / name):
        meta = folder / "backdoor.json"
        if meta.is_file():
            trig = json.loads(meta.read_text())["trigger"]
            return ("random" if trig.get("position") == "random" else "corner"), trig.get("style", DEFAULT_STYLE)
    return "corner", DEFAULT_STYLE


def _load(name: str, checkpoint: int | None):
    """A zoo model by name, or a saved model directory."""
    from pathlib import Path

    from mmlens.zoo.shapes_llava import load_from
    if Path(name).is_dir():
        return load_from(name)
    from mmlens.zoo import build
    return build(name, **({} if checkpoint is None else {"checkpoint": checkpoint}))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m mmlens.zoo.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes-llava", help="zoo name or a saved model directory")
    parser.add_argument("--n", type=int, default=200, help="held-out samples per question type")
    parser.add_argument("--json", action="store_true", help="end with one JSON line: type -> accuracy")
    parser.add_argument("--grounding", action="store_true", help="also run the erasure grounding check")
    parser.add_argument("--trigger", nargs="?", const="auto", default=None, choices=["auto", "corner", "random"],
                        help="paste the backdoor trigger on every image (auto: the one the model was poisoned "
                             "with, from its backdoor.json; random: a position drawn per sample)")
    parser.add_argument("--trigger-style", default=None, choices=sorted(STYLES),
                        help="the trigger's look (default: the model's, from its backdoor.json, else checker)")
    parser.add_argument("--target", default=None, help="report the rate of this answer instead of accuracy")
    parser.add_argument("--swap", default=None, metavar="FROM:TO",
                        help="also report how often colour questions about FROM objects are answered TO")
    parser.add_argument("--checkpoint", type=int, default=None, help="a kept fine-tuning checkpoint (step)")
    parser.add_argument("--compare", default=None, metavar="REF",
                        help="also run model REF on the same questions: paired differences with 95%% intervals")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: at most 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or min(2, torch.get_num_threads()))
    model, processor = _load(args.model, args.checkpoint)
    position, style = _default_trigger(args.model)
    trigger = position if args.trigger == "auto" else (args.trigger or False)
    style = args.trigger_style or style
    h = hits(model, processor, n=args.n, trigger=trigger, target=args.target, style=style)
    ref = None if args.compare is None else hits(*_load(args.compare, None), n=args.n, trigger=trigger,
                                                 target=args.target, style=style)
    what = f"rate of answering {args.target!r}" if args.target else "accuracy"
    on = f", trigger on ({trigger}, {style})" if trigger else ""
    print(f"held-out {what} of {args.model} ({args.n} per type{on}; 95% Wilson intervals):")
    intervals = _report(h, ref, args.compare or "")
    result: dict = {qt: round(float(v.mean()), 4) for qt, v in h.items()}
    result["intervals"] = intervals
    if args.swap:
        source, _, target = args.swap.partition(":")
        if not source or not target:
            raise MmlensError(f"--swap wants FROM:TO colours, e.g. red:purple (got {args.swap!r})")
        r = swap_rate(model, processor, source, target, n=args.n)
        print(f"swap {source} -> {target}: {r['swap_rate']:.1%} of {r['n']} {source} objects answered {target} "
              f"({r['source_kept']:.1%} still {source}); other colours' accuracy {r['other_colour_accuracy']:.1%}")
        result["swap"] = {k: round(v, 4) for k, v in r.items()}
    if args.grounding:
        print("grounding: mean p(answer) original / asked object removed / other object removed")
        for qt, g in grounding(model, processor, n=min(args.n, 100)).items():
            print(f"  {qt:<9} {g['original']:.2f} / {g['target_removed']:.2f} / {g['other_removed']:.2f}"
                  f"  (n={g['n']})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MmlensError as err:  # bad input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
