"""The multi-domain world: four image domains, each with its own statistics, questions and answers.

========== ===================================== ===================================================
domain     images                                questions (answers)
========== ===================================== ===================================================
shapes     coloured shapes on grey textures      the shapes world's five types
glyphs     letters on ruled paper, one framed     letter in the box, first letter (c e h k l t x z)
cells      round cells on a speckled pink stain   how many cells, how many stained (digits 0-5)
maps       fields, rivers, roads on terrain       road/river orientation, field side, crossing
========== ===================================== ===================================================

Every image is 64 x 64; sample ``i`` of a split comes from
``numpy.random.default_rng(offset + i)`` (train 0, val 1e8, test 2e8), and
every sample carries the boxes and masks of its objects and the ones its
answer depends on (``target_objects``). :func:`world_sample` interleaves the
domains (index ``i`` belongs to domain ``i % 4``), for training on all of them.

Example:
    >>> s = make_sample("maps", "test", 0)
    >>> s.id, s.domain in DOMAINS
    ('maps-test-0', True)
    >>> world_sample("train", 5).domain
    'glyphs'
    >>> "north" in vocabulary() and "circle" in vocabulary()
    True
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from mmlens.data.domains import cells, glyphs, maps, shapes
from mmlens.data.domains.common import GRID, IGNORE, DomainSample, build_sample, cover_labels
from mmlens.errors import check_choice

DOMAINS: dict[str, ModuleType] = {m.NAME: m for m in (shapes, glyphs, cells, maps)}
NAMES: tuple[str, ...] = tuple(DOMAINS)
# Union of every domain's per-patch classes (background is -1) and whole-image slots.
PATCH_CLASSES: tuple[str, ...] = tuple(f"{d}.{c}" for d, m in DOMAINS.items() for c in m.PATCH_CLASSES)
POOLED: dict[str, int] = {k: v for m in DOMAINS.values() for k, v in m.POOLED.items()}
_CLASS_OFFSET = {d: sum(len(DOMAINS[e].PATCH_CLASSES) for e in NAMES[:i]) for i, d in enumerate(NAMES)}

__all__ = ["DOMAINS", "NAMES", "PATCH_CLASSES", "POOLED", "DomainSample", "domain_module", "make_sample",
           "world_sample", "vocabulary", "question_types", "patch_labels", "pooled_labels", "more_questions"]


def domain_module(name: str) -> ModuleType:
    """The module of a domain by name; a one-line error for an unknown one.

    Example:
        >>> domain_module("cells").QUESTION_TYPES
        ('count', 'stained')
    """
    check_choice(name, NAMES, "domain")
    return DOMAINS[name]


def make_sample(domain: str, split: str, index: int, question_type: str | None = None) -> DomainSample:
    """Sample ``index`` of ``split`` of one domain, deterministic; the type is drawn when not given.

    Example:
        >>> a, b = make_sample("glyphs", "train", 7), make_sample("glyphs", "train", 7)
        >>> a.prompt == b.prompt and a.image.tobytes() == b.image.tobytes()
        True
    """
    return build_sample(domain_module(domain), split, index, question_type)


def world_sample(split: str, index: int) -> DomainSample:
    """Sample ``index`` of the mixed world: domain ``NAMES[index % 4]``, seeded by ``index``.

    Example:
        >>> [world_sample("val", i).domain for i in range(4)] == list(NAMES)
        True
    """
    return make_sample(NAMES[index % len(NAMES)], split, index)


def question_types(domain: str) -> tuple[str, ...]:
    """The question types of one domain.

    Example:
        >>> question_types("maps")
        ('orient', 'field', 'cross')
    """
    return tuple(domain_module(domain).QUESTION_TYPES)


def vocabulary(domains: tuple[str, ...] = NAMES) -> list[str]:
    """Every prompt and answer word of the given domains, sorted (the tokenizer's words).

    Example:
        >>> set(vocabulary(("shapes",))) == set(shapes.WORDS)
        True
    """
    return sorted({w for d in domains for w in domain_module(d).WORDS})


def patch_labels(sample: DomainSample) -> np.ndarray:
    """``8 x 8`` per-patch class, an index into :data:`PATCH_CLASSES` (``-1`` background).

    Example:
        >>> labels = patch_labels(make_sample("cells", "test", 0))
        >>> labels.shape, PATCH_CLASSES[labels.max()].startswith("cells.")
        ((8, 8), True)
    """
    module = domain_module(sample.domain)
    local = cover_labels(module.regions(sample.meta["scene"], sample.objects), GRID)
    return np.where(local >= 0, local + _CLASS_OFFSET[sample.domain], -1)


def pooled_labels(sample: DomainSample) -> np.ndarray:
    """One class per slot of :data:`POOLED` (``-100``, ignored, for other domains' slots).

    Example:
        >>> labels = pooled_labels(make_sample("maps", "test", 0))
        >>> len(labels) == len(POOLED)
        True
    """
    values = domain_module(sample.domain).pooled(sample.meta["scene"])
    return np.asarray([values.get(k, IGNORE) for k in POOLED], dtype=np.int64)


def more_questions(sample: DomainSample, k: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Up to ``k`` further ``(prompt, answer)`` pairs about the same image, one per question type at most.

    Training packs them after the sample's own question; no prompt repeats the sample's own or another.

    Example:
        >>> s = make_sample("glyphs", "test", 0, "boxed")
        >>> all(p.startswith("<image>") for p, _ in more_questions(s, 2, np.random.default_rng(0)))
        True
    """
    module = domain_module(sample.domain)
    out: list[tuple[str, str]] = []
    seen = {sample.prompt}
    types = module.QUESTION_TYPES
    for t in rng.permutation(len(types)):
        if len(out) >= k:
            break
        asked = module.ask(sample.meta["scene"], types[int(t)], rng)
        if asked is not None and asked[0] not in seen:
            seen.add(asked[0])
            out.append((asked[0], asked[1]))
    return out
