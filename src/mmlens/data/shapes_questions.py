"""What a shapes-world question asks about: the object's pixels and the prompt words that name it.

Methods that need ground truth (causal tracing's ``object image`` and
``object words`` groups, the command line's default object) read it through
these functions, so no method parses shapes-world samples or prompts itself.

Example:
    >>> from mmlens.data.shapes import make_sample
    >>> s = make_sample("test", 0, "colour")
    >>> object_words(s) == prompt_object_words(s.prompt)
    True
    >>> int(object_region(s).sum()) == s.objects[s.target_objects[0]].area
    True
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mmlens.data.sample import ShapesSample
from mmlens.data.shapes import COLOURS, SHAPES, make_sample

_SOURCE = re.compile(r"make_sample\('(\w+)', (\d+), '(\w+)'\)")


def object_region(sample: Any) -> np.ndarray | None:
    """The pixel mask ``(H, W)`` of the objects the answer depends on; None when there is none.

    Samples that are not from the shapes world (no ``target_objects``) have none.

    Example:
        >>> object_region(make_sample("test", 0, "colour")).dtype
        dtype('bool')
    """
    targets = getattr(sample, "target_objects", None)
    if not targets:
        return None
    return sample.target_mask()


def object_words(sample: Any) -> list[str]:
    """The colour and shape words of the sample's question, in that order (empty when it has none).

    Example:
        >>> s = make_sample("test", 0, "shape")
        >>> object_words(s) == [s.meta["question"].colour]
        True
    """
    question = getattr(sample, "meta", {}).get("question")
    return [w for w in (getattr(question, "colour", None), getattr(question, "shape", None)) if w]


def prompt_object_words(prompt: str) -> list[str]:
    """The prompt's colour and shape words (the shapes world's vocabulary), in order.

    Example:
        >>> prompt_object_words("<image> is there a red circle ?")
        ['red', 'circle']
    """
    known = set(COLOURS) | set(SHAPES)
    return [w for w in prompt.lower().replace("?", " ").split() if w in known]


def sample_from_source(source: str) -> ShapesSample | None:
    """Regenerate the sample a ``make_sample('split', index, 'type')`` call names; None for anything else.

    Shipped examples record their origin this way, so their ground truth can be rebuilt.

    Example:
        >>> sample_from_source("mmlens.data.shapes.make_sample('test', 13, 'colour')").id
        'shapes-test-13'
        >>> sample_from_source("a photo") is None
        True
    """
    match = _SOURCE.search(source)
    if match is None:
        return None
    return make_sample(match.group(1), int(match.group(2)), match.group(3))
