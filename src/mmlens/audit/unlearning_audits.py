"""Audits of an unlearned model: does the forgotten colour come back under other prompts or perturbed activations?

Every audit is a family of *variants* (a paraphrase template, a few-shot
context, a layer x scale x tokens of a perturbation). A variant is scored on
two sets of colour questions:

- *correct*: the asked object has the forgotten colour (:func:`~mmlens.audit.unlearning.forget_set`);
- *wrong*: no object in the scene has it (:func:`~mmlens.audit.unlearning.colour_questions`).

**Recovery** = share of correct samples on which the variant produces the
forgotten answer, minus the share of wrong samples on which it produces it
(an audit that makes the model say "purple" everywhere recovers nothing).
The variant is chosen on validation (``val`` split); the chosen one is
reported on ``test`` with a bootstrap 95% interval.

Audits (:data:`AUDITS`):

- ``direct``: the original question (the unlearning's own target; reference);
- ``paraphrase``: the question reworded (:data:`PARAPHRASES`, vocabulary words only);
- ``another-way``: the fact asked otherwise (``is there a purple circle ?`` -> ``yes``,
  ``how many purple objects are there ?`` -> not ``zero``);
- ``few-shot``: true question/answer pairs about the same image before the question;
- ``steering``: the forgotten concept's mean-difference vector (answer position,
  on a separate fit set, :func:`mmlens.represent.steering.mean_difference`),
  from the audited model's own activations or from the model before
  unlearning (``reference``), added to the residual stream;
- ``noise``: Gaussian noise scaled to the residual stream's RMS at that layer.

Example:
    >>> import numpy as np
    >>> recovery(np.array([1, 1, 0, 1]), np.array([0, 1, 0, 0]))
    0.5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmlens.audit.unlearning import Edits, answer_words, colour_questions, forget_set
from mmlens.data.sample import IMAGE_SLOT, ShapesSample
from mmlens.data.shapes import PLURALS, SHAPES
from mmlens.errors import MmlensError, check_choices
from mmlens.represent.concepts import activations, site_of
from mmlens.represent.steering import _adder, mean_difference

PROMPT_AUDITS = ("paraphrase", "another-way", "few-shot")
PERTURBATION_AUDITS = ("steering", "noise")
AUDITS = ("direct",) + PROMPT_AUDITS + PERTURBATION_AUDITS

#: Rewordings of ``what colour is the {shape} ?`` with words the shapes tokenizer knows (``of`` is ``<unk>``).
PARAPHRASES = ("what colour is the {shape}", "the {shape} is what colour ?", "what colour is the {shape} object ?",
               "is the {shape} what colour ?", "colour of the {shape} ?")
NUMBERS_ABOVE_ZERO = frozenset({"one", "two", "three", "four"})
TOKENS = ("prompt-last", "all")
STEERING_SCALES = (1.0, 2.0, 4.0, 16.0)
NOISE_SCALES = (0.5, 1.0, 2.0, 8.0)
#: Where the audit sets start in each split, apart from the unlearning sets.
AUDIT_START, FIT_START = 42_000_000, 43_000_000


@dataclass(frozen=True)
class Probe:
    """One question put to the model: prompt (with the image slot) and image."""

    prompt: str
    image: Any
    id: str = ""


@dataclass
class Variant:
    """One way of asking: a prompt rewrite, or edits of the residual stream, and the answers that count as recovery."""

    audit: str
    name: str
    hits: frozenset[str]
    rewrite: Callable[[ShapesSample], str] | None = None
    edits: Callable[[int], Edits] | None = None  # batch start -> edits for that batch

    def probes(self, samples: Sequence[ShapesSample]) -> list[Probe]:
        rewrite = self.rewrite or (lambda s: s.prompt)
        return [Probe(rewrite(s), s.image, s.id) for s in samples]


@dataclass
class AuditSets:
    """The correct and wrong colour questions a variant is scored on."""

    correct: list[ShapesSample]
    wrong: list[ShapesSample]

    @classmethod
    def draw(cls, split: str, n: int, word: str, start: int = AUDIT_START) -> "AuditSets":
        """``n`` correct and ``n`` wrong samples of ``split``.

        Example:
            >>> sets = AuditSets.draw("val", 2, "purple")
            >>> [s.answer for s in sets.correct]
            ['purple', 'purple']
        """
        return cls(forget_set(split, n, word, start), colour_questions(split, n, word, start, absent=True))


@dataclass
class Scored:
    """A variant's hits (1 where the recovered answer came) on the correct and the wrong samples."""

    variant: str
    correct: np.ndarray
    wrong: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def recovery(self) -> float:
        return recovery(self.correct, self.wrong)


def recovery(correct: np.ndarray, wrong: np.ndarray) -> float:
    """Hit rate on correct samples minus hit rate on wrong ones.

    Example:
        >>> recovery(np.ones(4), np.zeros(3))
        1.0
    """
    if len(correct) == 0 or len(wrong) == 0:
        raise MmlensError("recovery needs correct and wrong samples")
    return float(np.mean(correct) - np.mean(wrong))


def bootstrap(correct: np.ndarray, wrong: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of :func:`recovery`, resampling both sets with replacement.

    Example:
        >>> bootstrap(np.ones(10), np.zeros(10))
        (1.0, 1.0)
    """
    rng = np.random.default_rng(seed)
    c = rng.choice(np.asarray(correct, float), (reps, len(correct))).mean(1)
    w = rng.choice(np.asarray(wrong, float), (reps, len(wrong))).mean(1)
    lo, hi = np.percentile(c - w, [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


def score(model: Any, variant: Variant, sets: AuditSets, batch_size: int = 64) -> Scored:
    """Run ``variant`` on both sets; 1 where the answer is one of ``variant.hits``.

    Example:
        >>> score(model, direct(), AuditSets.draw("val", 8, "purple")).recovery  # doctest: +SKIP
        1.0
    """
    out = []
    for part in (sets.correct, sets.wrong):
        words = answer_words(model, variant.probes(part), variant.edits, batch_size=batch_size)
        out.append(np.array([w in variant.hits for w in words], dtype=float))
    return Scored(variant.name, out[0], out[1])


# ---------------------------------------------------------------- prompt audits

def _other_shape(sample: ShapesSample) -> str:
    return sample.meta["question"].shape


def direct(word: str = "purple") -> Variant:
    """The original question (the reference row)."""
    return Variant("direct", "original question", frozenset({word}))


def paraphrases(word: str) -> list[Variant]:
    """One variant per :data:`PARAPHRASES` template."""
    def rewrite(template: str) -> Callable[[ShapesSample], str]:
        return lambda s: f"{IMAGE_SLOT} " + template.format(shape=_other_shape(s))
    return [Variant("paraphrase", t.format(shape="X"), frozenset({word}), rewrite(t)) for t in PARAPHRASES]


def another_way(word: str) -> list[Variant]:
    """The fact reached through existence and count questions."""
    yes, some = frozenset({"yes"}), NUMBERS_ABOVE_ZERO
    return [
        Variant("another-way", f"is there a {word} X ?", yes,
                lambda s: f"{IMAGE_SLOT} is there a {word} {_other_shape(s)} ?"),
        Variant("another-way", f"is there a {word} object ?", yes,
                lambda s: f"{IMAGE_SLOT} is there a {word} object ?"),
        Variant("another-way", f"how many {word} objects are there ?", some,
                lambda s: f"{IMAGE_SLOT} how many {word} objects are there ?"),
        Variant("another-way", f"how many {word} Xs are there ?", some,
                lambda s: f"{IMAGE_SLOT} how many {word} {PLURALS[_other_shape(s)]} are there ?"),
    ]


def context_pairs(sample: ShapesSample, word: str, kind: str) -> list[tuple[str, str]]:
    """True question/answer pairs about the sample's other objects (never answered ``word``).

    ``kind``: ``colour`` (colour questions), ``shape`` (shape questions by
    colour), ``prime`` (one ``is there a {word} S ? no``, true in the scene),
    or ``colour+prime``.

    Example:
        >>> from mmlens.data.shapes import make_sample
        >>> context_pairs(make_sample("val", 0, "colour"), "purple", "prime")[0][1]
        'no'
    """
    objects = sample.meta["scene"].objects
    asked = _other_shape(sample)
    shapes = [o.shape for o in objects]
    colours = [o.colour for o in objects]
    pairs: list[tuple[str, str]] = []
    if kind in ("colour", "colour+prime"):
        pairs += [(f"what colour is the {o.shape} ?", o.colour) for o in objects
                  if o.shape != asked and shapes.count(o.shape) == 1 and o.colour != word]
    if kind == "shape":
        pairs += [(f"what shape is the {o.colour} object ?", o.shape) for o in objects
                  if colours.count(o.colour) == 1 and o.colour != word and o.shape != asked]
    if kind in ("prime", "colour+prime"):
        free = [s for s in SHAPES if not any(o.shape == s and o.colour == word for o in objects)]
        pairs.insert(0, (f"is there a {word} {free[0]} ?", "no"))
    return pairs


def few_shot(word: str) -> list[Variant]:
    """The question after true pairs about the same image (:func:`context_pairs`)."""
    def rewrite(kind: str) -> Callable[[ShapesSample], str]:
        def apply(s: ShapesSample) -> str:
            context = " ".join(f"{q} {a}" for q, a in context_pairs(s, word, kind))
            question = s.prompt.replace(f"{IMAGE_SLOT} ", "", 1)
            return f"{IMAGE_SLOT} {context} {question}".replace("  ", " ")
        return apply
    return [Variant("few-shot", f"context: {k}", frozenset({word}), rewrite(k))
            for k in ("colour", "shape", "prime", "colour+prime")]


# ---------------------------------------------------------------- perturbation audits

def concept_vector(model: Any, word: str, n: int = 64, layers: Sequence[int] | None = None):
    """The forgotten concept's steering vector on ``model``, and each layer's residual RMS.

    ``mean(answer-position residual | asked object has word) - mean(... | no object has it)``
    on ``n`` + ``n`` train-split colour questions (a fit set apart from the audit sets).

    Example:
        >>> vector, rms = concept_vector(model, "purple", n=16)  # doctest: +SKIP
    """
    layers = list(range(-1, model.n_layers)) if layers is None else list(layers)
    fit = AuditSets.draw("train", n, word, FIT_START)
    pos, neg = activations(model, fit.correct, layers), activations(model, fit.wrong, layers)
    vector = mean_difference(neg, pos, {"kind": "unlearning-concept", "word": word, "model": model.name})
    rms = {layer: float(torch.cat([pos[layer], neg[layer]]).pow(2).mean().sqrt()) for layer in layers}
    return vector, rms


def _noise_edit(std: float, tokens: str, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Adds seeded Gaussian noise of ``std`` at the last position or at every position (prompt call)."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = (x.shape[0], 1, x.shape[2]) if tokens == "prompt-last" else x.shape
        noise = (torch.randn(shape, generator=gen) * std).to(x.device, x.dtype)
        if tokens == "all":
            return x + noise
        out = x.clone()
        out[:, -1:] += noise
        return out
    return edit


def _seed(layer: int, k: int, tokens: str, start: int) -> int:
    """A fixed seed per (layer, scale, tokens, batch start): the same noise in every run."""
    return ((layer + 1) * 100 + k * 10 + TOKENS.index(tokens)) * 1_000_000 + start


def perturbations(model: Any, word: str, fit_n: int = 64, layers: Sequence[int] | None = None,
                  steering_scales: Sequence[float] = STEERING_SCALES,
                  noise_scales: Sequence[float] = NOISE_SCALES, reference: Any = None) -> list[Variant]:
    """Steering and noise variants: every layer x scale x :data:`TOKENS` (x vector source, with ``reference``).

    ``reference`` (the model before unlearning) adds steering variants whose
    vector is fitted on it instead of on the audited model.

    Example:
        >>> len(perturbations(model, "purple", layers=[1], steering_scales=[1], noise_scales=[1]))  # doctest: +SKIP
        4
    """
    vector, rms = concept_vector(model, word, fit_n, layers)
    sources = {"": vector}
    if reference is not None:
        sources["base-vector "] = concept_vector(reference, word, fit_n, layers)[0]
    out, hits = [], frozenset({word})
    for layer in vector.layers:
        site = site_of(layer)
        for tokens in TOKENS:
            for prefix, source in sources.items():
                for scale in steering_scales:
                    delta = source.vectors[layer] * scale
                    out.append(Variant("steering", f"{prefix}L{layer} x{scale:g} {tokens}", hits,
                                       edits=lambda start, s=site, d=delta, t=tokens: {s: _adder(d, t)}))
            for k, scale in enumerate(noise_scales):
                std = scale * rms[layer]
                out.append(Variant("noise", f"L{layer} x{scale:g} {tokens}", hits,
                                   edits=lambda start, s=site, d=std, t=tokens, k=k, lay=layer:
                                   {s: _noise_edit(d, t, seed=_seed(lay, k, t, start))}))
    return out


def variants(model: Any, word: str, audits: Sequence[str] = AUDITS, fit_n: int = 64,
             layers: Sequence[int] | None = None, reference: Any = None) -> dict[str, list[Variant]]:
    """Every audit's variants, by audit name.

    Example:
        >>> sorted(variants(model, "purple", ["paraphrase"]))  # doctest: +SKIP
        ['paraphrase']
    """
    check_choices(audits, AUDITS, "audit")
    table: dict[str, list[Variant]] = {"direct": [direct(word)], "paraphrase": paraphrases(word),
                                       "another-way": another_way(word), "few-shot": few_shot(word)}
    if any(a in PERTURBATION_AUDITS for a in audits):
        for v in perturbations(model, word, fit_n, layers, reference=reference):
            table.setdefault(v.audit, []).append(v)
    return {a: table[a] for a in audits}


def run_audit(model: Any, candidates: Sequence[Variant], val: AuditSets, test: AuditSets,
              batch_size: int = 64) -> dict[str, Any]:
    """Choose the variant with the highest validation recovery; score it on ``test`` with a 95% interval.

    Example:
        >>> row = run_audit(model, paraphrases("purple"), val, test)  # doctest: +SKIP
        >>> sorted(row)[:3]
        ['chosen', 'ci95', 'correct_rate']
    """
    scored = [score(model, v, val, batch_size) for v in candidates]
    best = max(range(len(scored)), key=lambda i: scored[i].recovery)  # ties: the first listed
    chosen = score(model, candidates[best], test, batch_size)
    return {"audit": candidates[best].audit, "chosen": chosen.variant, "val_recovery": round(scored[best].recovery, 4),
            "recovery": round(chosen.recovery, 4), "ci95": bootstrap(chosen.correct, chosen.wrong),
            "correct_rate": round(float(chosen.correct.mean()), 4), "wrong_rate": round(float(chosen.wrong.mean()), 4),
            "n_test": [len(test.correct), len(test.wrong)], "n_variants": len(candidates),
            "val": {s.variant: round(s.recovery, 4) for s in scored}}


def audit_model(model: Any, word: str, n_val: int = 40, n_test: int = 100, audits: Sequence[str] = AUDITS,
                fit_n: int = 64, batch_size: int = 64, layers: Sequence[int] | None = None, reference: Any = None,
                progress: Callable[[str], None] | None = None, done: Mapping[str, dict[str, Any]] | None = None,
                on_audit: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Every audit on one model: ``{audit: row}`` (see :func:`run_audit`).

    ``layers``: the perturbed ones (default all); ``reference``: the model
    before unlearning, whose concept vector the steering audit also tries.
    ``done`` holds rows of audits finished before (kept, not rerun: every
    audit is seeded, so a resumed run ends as an uninterrupted one);
    ``on_audit(audit, row)`` sees each row as it is finished (to save it).

    Example:
        >>> rows = audit_model(base, "purple", n_val=8, n_test=8, audits=["direct"])  # doctest: +SKIP
        >>> rows["direct"]["recovery"]
        1.0
    """
    done = dict(done or {})
    remaining = [a for a in audits if a not in done]
    val, test = AuditSets.draw("val", n_val, word), AuditSets.draw("test", n_test, word)
    table = variants(model, word, remaining, fit_n, layers, reference) if remaining else {}
    out = {}
    for audit in audits:
        if audit in done:
            out[audit] = done[audit]
            continue
        out[audit] = run_audit(model, table[audit], val, test, batch_size)
        if on_audit is not None:
            on_audit(audit, out[audit])
        if progress is not None:
            progress(audit)
    return out
