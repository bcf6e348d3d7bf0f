"""Shared pieces of benchmarks/steering.py: question sets of shapes-world, bootstrap rates and drops, answers checked.

Example:
    >>> from steering_common import colour_questions, rate
    >>> rate([True, False, True])["rate"]
    0.6667
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmlens.data.shapes import COLOURS, make_sample
from mmlens.represent.concepts import object_patches
from mmlens.represent.steering import SteeringVector, answers

ROOT = Path(__file__).resolve().parents[1]
OFF_TYPES = ("position", "count")


def colour_questions(split: str, answer: str, n: int) -> list[Any]:
    """The first ``n`` colour questions of ``split`` whose answer is ``answer``."""
    out, i = [], 0
    while len(out) < n:
        s = make_sample(split, i, "colour")
        i += 1
        if s.answer == answer:
            out.append(s)
    return out


def off_target(split: str, n: int, types: Sequence[str] = OFF_TYPES, start: int = 0) -> list[Any]:
    """``n`` questions of ``types`` (alternating) that name no colour."""
    out, i = [], start
    while len(out) < n:
        s = make_sample(split, i, types[i % len(types)])
        i += 1
        if not set(s.prompt.split()) & set(COLOURS):
            out.append(s)
    return out


def object_sets(split: str, n: int, colour: str, min_cover: float = 0.25) -> tuple[list[Any], list[list[int]]]:
    """``n`` scenes with a ``colour`` object, and that object's patches (the first one per scene)."""
    samples, where, i = [], [], 0
    while len(samples) < n:
        s = make_sample(split, i)
        i += 1
        for o in s.objects:
            if o.colour == colour:
                samples.append(s)
                where.append(object_patches(o, min_cover=min_cover))
                break
    return samples, where


def rate(hits: Sequence[bool], seed: int = 0, resamples: int = 1000) -> dict[str, float]:
    """A rate with its bootstrap 95% interval."""
    h = np.asarray(hits, float)
    boots = np.random.default_rng(seed).choice(h, (resamples, len(h))).mean(1)
    return {"rate": round(float(h.mean()), 4), "lo": round(float(np.quantile(boots, 0.025)), 4),
            "hi": round(float(np.quantile(boots, 0.975)), 4), "n": len(h)}


def drop(before: Sequence[bool], after: Sequence[bool], seed: int = 0, resamples: int = 1000) -> dict[str, float]:
    """Accuracy before minus after (points), paired bootstrap 95% interval."""
    d = np.asarray(before, float) - np.asarray(after, float)
    boots = np.random.default_rng(seed).choice(d, (resamples, len(d))).mean(1) * 100
    return {"points": round(float(d.mean() * 100), 2), "lo": round(float(np.quantile(boots, 0.025)), 2),
            "hi": round(float(np.quantile(boots, 0.975)), 2), "n": len(d)}


def correct(model: Any, samples: Sequence[Any], vector: SteeringVector | None = None, scale: float = 1.0,
            tokens: Any = "prompt-last", want: str | Callable[[Any], str] | None = None) -> list[bool]:
    """Per sample, whether the (steered) answer is ``want`` (a word, or per sample; default its answer)."""
    got = answers(model, samples, vector, scale, tokens)
    wanted = [want(s) if callable(want) else (want or s.answer) for s in samples]
    return [g == w for g, w in zip(got, wanted)]


def _choose(sweep: list[dict], key: str, allowed: Callable[[dict], bool]) -> dict:
    """The allowed setting with the highest ``key`` (ties: the smaller scale); else the highest ``key``."""
    pool = [r for r in sweep if allowed(r)] or sweep
    best = max(pool, key=lambda r: (round(r[key], 3), -r["scale"]))
    return {k: best[k] for k in ("layer", "scale") if k in best} | {k: best[k] for k in best if k.startswith("min_")}
