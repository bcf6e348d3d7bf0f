"""Unlearning a fact of the shapes world, and measuring what is left: the forget and retain sets.

The fact to forget is one colour word (``purple`` by default): ``shapes-llava``
answers ``<image> what colour is the circle ?`` with ``purple`` when the circle
is purple, and an unlearned model should not, while it keeps answering
everything else.

- :func:`forget_set`: colour questions whose answer is the forgotten word.
- :func:`retain_set`: questions of every type whose prompt and answer never
  mention the word (questions such as ``is there a purple square ?`` are in
  neither set: they are left to the audits, :mod:`mmlens.audit.unlearning_audits`).
- :func:`answer_words`: greedy first answer words, optionally under edits of
  the residual stream (the perturbation audit); :func:`accuracy` on top of it.

The methods (gradient ascent, gradient difference, NPO) are in
:mod:`mmlens.audit.unlearning_methods`.

Example:
    >>> forget = forget_set("val", 3)
    >>> [s.answer for s in forget]
    ['purple', 'purple', 'purple']
    >>> any("purple" in s.prompt or s.answer == "purple" for s in retain_set("val", 20))
    False
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from mmlens.data.sample import ShapesSample
from mmlens.data.shapes import COLOURS, QUESTION_TYPES, make_sample
from mmlens.errors import MmlensError, check_choice
from mmlens.represent.concepts import prepare_samples

#: The fact forgotten unless told otherwise.
DEFAULT_FORGET = "purple"
#: Sample indices at which the sets start in each split, apart from other experiments' ranges.
FORGET_START = 40_000_000
RETAIN_START = 41_000_000


def check_word(word: str) -> str:
    """``word`` if it is a colour of the shapes world, else one line.

    Example:
        >>> check_word("purple")
        'purple'
    """
    return check_choice(word, COLOURS, "--forget colour")


def _draw(split: str, start: int, n: int, keep: Callable[[ShapesSample], bool],
          question_type: Callable[[int], str | None]) -> list[ShapesSample]:
    """The first ``n`` samples from index ``start`` on that ``keep`` accepts."""
    out, index = [], start
    while len(out) < n:
        sample = make_sample(split, index, question_type(index))
        if keep(sample):
            out.append(sample)
        index += 1
        if index - start > 50 * n + 1000:
            raise MmlensError(f"only {len(out)} of {n} samples found in {split}")
    return out


def scene_colours(sample: ShapesSample) -> set[str]:
    """The colours of every object in the sample's scene."""
    return {o.colour for o in sample.meta["scene"].objects}


def forget_set(split: str, n: int, word: str = DEFAULT_FORGET, start: int = FORGET_START) -> list[ShapesSample]:
    """``n`` colour questions of ``split`` whose answer is ``word`` (the fact to forget).

    Example:
        >>> forget_set("train", 2)[0].prompt.startswith("<image> what colour is the")
        True
    """
    check_word(word)
    return _draw(split, start, n, lambda s: s.answer == word, lambda _: "colour")


def colour_questions(split: str, n: int, word: str = DEFAULT_FORGET, start: int = FORGET_START,
                     absent: bool = True) -> list[ShapesSample]:
    """``n`` colour questions whose answer is not ``word`` (with ``absent``: no object in the scene has it).

    The audits' *wrong* samples: there the forgotten word is wrong whatever is asked.

    Example:
        >>> all("purple" not in scene_colours(s) for s in colour_questions("val", 3))
        True
    """
    check_word(word)
    keep = (lambda s: word not in scene_colours(s)) if absent else (lambda s: s.answer != word)
    return _draw(split, start, n, keep, lambda _: "colour")


def retain_set(split: str, n: int, word: str = DEFAULT_FORGET, start: int = RETAIN_START) -> list[ShapesSample]:
    """``n`` questions of every type, in turn, that never mention ``word`` in the prompt or the answer.

    Example:
        >>> sorted({s.question_type for s in retain_set("val", 10)}) == sorted(QUESTION_TYPES)
        True
    """
    check_word(word)

    def keep(sample: ShapesSample) -> bool:
        return word not in sample.prompt.split() and sample.answer != word

    return _draw(split, start, n, keep, lambda i: QUESTION_TYPES[i % len(QUESTION_TYPES)])


Edits = Mapping[str, Callable[[torch.Tensor], torch.Tensor]]


@torch.no_grad()
def answer_words(model: Any, samples: Sequence[Any], edits: Callable[[int], Edits] | None = None,
                 batch_size: int = 64) -> list[str]:
    """The greedy first answer word of ``model`` (an :class:`mmlens.Model`) to each sample (``.prompt``, ``.image``).

    ``edits(start)`` gives the residual-stream edits for the batch starting at
    sample ``start`` (applied through :func:`mmlens.hooks.intervene` during
    generation); None runs the model unchanged.

    Example:
        >>> import mmlens
        >>> answer_words(mmlens.load("shapes-llava"), forget_set("test", 2))
        ['purple', 'purple']
    """
    from mmlens.hooks import intervene

    out: list[str] = []
    for start in range(0, len(samples), batch_size):
        batch = prepare_samples(model, samples[start:start + batch_size])
        with intervene(model, edits(start)) if edits is not None else nullcontext():
            ids = model.generate(batch, max_new_tokens=1)
        out += [text.strip() for text in model.decode(ids)]
    return out


def accuracy(model: Any, samples: Sequence[ShapesSample], batch_size: int = 64) -> float:
    """Share of ``samples`` whose first answer word is the right answer.

    Example:
        >>> import mmlens
        >>> accuracy(mmlens.load("shapes-llava"), retain_set("test", 10))
        1.0
    """
    if not samples:
        raise MmlensError("no samples to score")
    words = answer_words(model, samples, batch_size=batch_size)
    return sum(w == s.answer for w, s in zip(words, samples)) / len(samples)


def forget_report(model: Any, word: str, n: int = 100, split: str = "test") -> dict[str, float]:
    """``forget_acc`` (share of forget questions still answered ``word``) and ``retain_acc``, on ``split``.

    Example:
        >>> import mmlens
        >>> forget_report(mmlens.load("shapes-llava"), "purple", n=10)["forget_acc"]
        1.0
    """
    return {"forget_acc": accuracy(model, forget_set(split, n, word)),
            "retain_acc": accuracy(model, retain_set(split, n, word)),
            "other_colour_acc": accuracy(model, colour_questions(split, n, word, absent=False))}

