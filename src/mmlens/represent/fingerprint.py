"""Model fingerprints by CKA of hidden states (after REEF, Zhang et al. 2024).

The same probe samples go through a victim and a suspect model; each model's
last-token hidden state after every decoder layer (``lm.L<i>.resid``) is
standardised per feature, and the two sets are compared by CKA
(:mod:`mmlens.represent.cka`). Only hidden states are compared, so models
with different tokenisers, vocabularies or widths still fingerprint. A probe
sample that fails on either model (a prompt too long, a processor error,
non-finite states) is dropped from both, and counted.

**The scoring rule** (fixed before any result was seen; ``docs/represent.md``):
the score is the debiased linear CKA, averaged over every decoder layer of
the victim paired with the suspect's layer at the same relative depth, on
the *off-task* probe set; its interval is the 2.5-97.5 percentile of 1,000
bootstrap resamples of the probe samples.

Example:
    >>> import mmlens
    >>> victim = mmlens.load("tiny-llava")
    >>> samples = probe_samples("off-task", 8)
    >>> reps = collect_last_token(victim, samples)
    >>> result = fingerprint(reps, reps, n_boot=20)
    >>> round(result.score, 4)
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from PIL import Image

from mmlens.errors import MmlensError, check_choice
from mmlens.models import runtime
from mmlens.represent.cka import KINDS, cka_from_grams, grams, paired_cka, resample, unbiased_on_weights

if TYPE_CHECKING:
    from mmlens.model import Model

SCORE_KIND = "unbiased"
PROBE_SETS = ("off-task", "on-task")
OFF_TASK_DOMAINS = ("glyphs", "cells", "maps")
# Probe samples come from the test split, from an index range no check or training used.
FIRST_INDEX = 5_000


@dataclass(frozen=True)
class ProbeSample:
    """One probe input: an id, a prompt with ``<image>`` and its image."""

    id: str
    prompt: str
    image: Image.Image


def probe_samples(kind: str, n: int, first: int = FIRST_INDEX) -> list[ProbeSample]:
    """``n`` probe samples: ``on-task`` (shapes-world questions) or ``off-task`` (other domains' images and prompts).

    Off-task samples cycle through the glyphs, cells and maps domains of
    :mod:`mmlens.data.domains`, each with its own question, in words a
    shapes-world model never saw.

    Example:
        >>> [s.id for s in probe_samples("off-task", 4)]
        ['glyphs-test-5000', 'cells-test-5001', 'maps-test-5002', 'glyphs-test-5003']
    """
    check_choice(kind, PROBE_SETS, "probe set")
    if n < 4:
        raise MmlensError(f"a fingerprint needs at least 4 probe samples, got {n}")
    if kind == "on-task":
        from mmlens.data.shapes import make_sample as shapes_sample
        made = [shapes_sample("test", first + i) for i in range(n)]
    else:
        from mmlens.data.domains import make_sample
        made = [make_sample(OFF_TASK_DOMAINS[i % len(OFF_TASK_DOMAINS)], "test", first + i) for i in range(n)]
    return [ProbeSample(s.id, s.prompt, s.image) for s in made]


@dataclass
class Representations:
    """Last-token hidden states of one model: ``layers[i]`` is ``(samples, width)`` for ``ids``."""

    model: str
    ids: list[str]
    layers: list[torch.Tensor]
    failed: dict[str, str] = field(default_factory=dict)

    def only(self, keep: Sequence[str]) -> list[torch.Tensor]:
        """The layers restricted to the samples ``keep``, in that order."""
        where = {sid: i for i, sid in enumerate(self.ids)}
        index = torch.tensor([where[sid] for sid in keep], dtype=torch.long)
        return [layer[index] for layer in self.layers]


def _last_token_states(model: "Model", samples: Sequence[ProbeSample]) -> list[torch.Tensor]:
    """``(batch, width)`` per decoder layer at the last prompt token (prompts are left-padded)."""
    from mmlens.hooks import capture

    batch = model.prepare([s.prompt for s in samples], [[s.image] for s in samples])
    with torch.no_grad(), capture(model, "lm.L*.resid") as captured:
        model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))  # no logits are read
    return [captured[f"lm.L{i}.resid"][:, -1].float().cpu() for i in range(model.n_layers)]


def collect_last_token(model: "Model", samples: Sequence[ProbeSample], batch_size: int = 16) -> Representations:
    """Every decoder layer's last-token hidden state for ``samples`` (failures recorded, not raised).

    A batch that fails is retried one sample at a time, so one bad sample
    costs only itself.

    Example:
        >>> import mmlens
        >>> reps = collect_last_token(mmlens.load("tiny-llava"), probe_samples("on-task", 4))
        >>> len(reps.ids), reps.layers[0].shape[0]
        (4, 4)
    """
    ids, rows, failed = [], [], {}
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start:start + batch_size])
        try:
            outs = [(chunk, _last_token_states(model, chunk))]
        except (MmlensError, ValueError, RuntimeError, IndexError):
            outs = []
            for sample in chunk:
                try:
                    outs.append(([sample], _last_token_states(model, [sample])))
                except (MmlensError, ValueError, RuntimeError, IndexError) as error:
                    failed[sample.id] = str(error).splitlines()[0][:200] or type(error).__name__
        for done, states in outs:
            finite = torch.stack([torch.isfinite(s).all(-1) for s in states]).all(0)
            for j, sample in enumerate(done):
                if finite[j]:
                    ids.append(sample.id)
                    rows.append([s[j] for s in states])
                else:
                    failed[sample.id] = "non-finite hidden state"
    if not rows:
        raise MmlensError(f"every probe sample failed on {model.name}; first reason: {next(iter(failed.values()))}")
    layers = [torch.stack([row[i] for row in rows]) for i in range(len(rows[0]))]
    return Representations(model.name, ids, layers, failed)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Each feature to mean 0 and standard deviation 1 over the samples (constant features to 0).

    Example:
        >>> standardise(torch.tensor([[1.0, 5.0], [3.0, 5.0]])).tolist()
        [[-1.0, 0.0], [1.0, 0.0]]
    """
    x = x.float()
    std = x.std(0, unbiased=False, keepdim=True)
    return torch.where(std > 0, (x - x.mean(0, keepdim=True)) / std.clamp_min(1e-12), torch.zeros_like(x))


def depth_pairs(n_victim: int, n_suspect: int) -> list[tuple[int, int]]:
    """Every victim layer with the suspect layer at the same relative depth.

    Example:
        >>> depth_pairs(4, 4)
        [(0, 0), (1, 1), (2, 2), (3, 3)]
        >>> depth_pairs(3, 5)
        [(0, 0), (1, 2), (2, 4)]
    """
    if n_victim == 1:
        return [(0, n_suspect - 1)]
    return [(i, round(i * (n_suspect - 1) / (n_victim - 1))) for i in range(n_victim)]


@dataclass
class Fingerprint:
    """A victim-suspect comparison: layer matrices per CKA kind, the score and its bootstrap interval."""

    victim: str
    suspect: str
    n: int
    dropped: int
    matrices: dict[str, torch.Tensor]
    pairs: list[tuple[int, int]]
    score: float
    low: float
    high: float
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (matrices as nested lists)."""
        return {"victim": self.victim, "suspect": self.suspect, "samples": self.n, "dropped": self.dropped,
                "score_kind": SCORE_KIND, "score": self.score, "interval": [self.low, self.high],
                "pairs": [list(p) for p in self.pairs],
                "matrices": {k: [[round(float(v), 6) for v in row] for row in m] for k, m in self.matrices.items()},
                "failed": self.failed}


def fingerprint(victim: Representations, suspect: Representations, *, n_boot: int = 1000, seed: int = 0,
                kinds: Sequence[str] = KINDS, level: float = 0.95) -> Fingerprint:
    """Compare two models' representations of the same probe samples by the fixed scoring rule.

    Samples missing from either side are dropped from both and counted.

    Example:
        >>> x = Representations("a", ["s0", "s1", "s2", "s3", "s4"], [torch.randn(5, 3)])
        >>> fingerprint(x, x, n_boot=10).dropped
        0
    """
    common = [sid for sid in victim.ids if sid in set(suspect.ids)]
    dropped = len(set(victim.ids) | set(suspect.ids) | set(victim.failed) | set(suspect.failed)) - len(common)
    if len(common) < 4:
        raise MmlensError(f"only {len(common)} probe samples ran on both {victim.model} and {suspect.model}; "
                          "CKA needs at least 4")
    v = [standardise(x) for x in victim.only(common)]
    s = [standardise(x) for x in suspect.only(common)]
    matrices, gram_cache = {}, {}
    for kind in dict.fromkeys([*kinds, SCORE_KIND]):
        gram_cache[kind] = (grams(v, kind), grams(s, kind))
        matrices[kind] = cka_from_grams(*gram_cache[kind], kind)
    pairs = depth_pairs(len(v), len(s))
    score = _pair_mean(matrices[SCORE_KIND], pairs)
    boot = bootstrap_scores(*gram_cache[SCORE_KIND], pairs, n_boot=n_boot, seed=seed)
    tail = (1 - level) / 2
    low, high = (float(torch.quantile(boot, q)) for q in (tail, 1 - tail))
    failed = {**{f"{victim.model}:{k}": r for k, r in victim.failed.items()},
              **{f"{suspect.model}:{k}": r for k, r in suspect.failed.items()}}
    return Fingerprint(victim.model, suspect.model, len(common), dropped,
                       {k: matrices[k] for k in kinds}, pairs, score, low, high, failed)


def _pair_mean(matrix: torch.Tensor, pairs: list[tuple[int, int]]) -> float:
    return float(torch.stack([matrix[i, j] for i, j in pairs]).mean())


def bootstrap_scores(kv: torch.Tensor, ks: torch.Tensor, pairs: list[tuple[int, int]], *, n_boot: int = 1000,
                     seed: int = 0, kind: str = SCORE_KIND, chunk: int = 250) -> torch.Tensor:
    """The score on ``n_boot`` resamples (with replacement) of the probe samples, ``(n_boot,)``.

    Only the scored layer pairs are computed, ``chunk`` resamples at a time;
    the debiased estimator works on resample counts (:func:`unbiased_on_weights`).

    Example:
        >>> g = grams([torch.randn(12, 4)], "unbiased")
        >>> bootstrap_scores(g, g, [(0, 0)], n_boot=5).shape
        torch.Size([5])
    """
    gen = torch.Generator().manual_seed(seed)
    n = kv.shape[-1]
    index = torch.randint(0, n, (n_boot, n), generator=gen)
    kv, ks = kv[[i for i, _ in pairs]], ks[[j for _, j in pairs]]
    scores = []
    for part in index.split(chunk):
        if kind == "unbiased":
            counts = torch.zeros(len(part), n).scatter_add_(1, part, torch.ones_like(part, dtype=torch.float32))
            scores.append(unbiased_on_weights(kv, ks, counts).mean(0))
        else:
            scores.append(paired_cka(resample(kv, part), resample(ks, part), kind, part).mean(0))
    return torch.cat(scores)
