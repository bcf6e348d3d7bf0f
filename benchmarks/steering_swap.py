"""benchmarks/steering.py's ``shift`` and ``mores`` parts: making red answered purple, and what else moves.

- ``shift``: the shift of means ``shapes-llava`` -> ``-ft-swap`` added to the
  base, per variant (plain, conditional, projected, both).
- ``mores``: a MoReS-style subspace steering on image tokens, trained with
  the model frozen.

Run them through ``python benchmarks/steering.py --part shift|mores``.

Example:
    >>> from steering_swap import mores_training_set
    >>> len(mores_training_set(4)[0])
    8
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch

import mmlens
from mmlens.data.shapes import COLOURS, make_sample
from mmlens.represent.concepts import EMBED, activations
from mmlens.represent.steering import SteeringVector, answers, project, shift_vectors
from steering_common import ROOT, _choose, colour_questions, correct, drop, off_target, rate


#: Shift variants: how the shift vector is added (issue 17's selectivity ideas).
SHIFT_VARIANTS = ("plain", "conditional", "projected", "projected+conditional")


def _swap_sets(split: str, n: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Red colour questions, colour questions about other colours, and other types naming no colour."""
    red = colour_questions(split, "red", n)
    other = [s for s in (make_sample(split, i, "colour") for i in range(3 * n)) if s.answer != "red"][:n]
    return red, other, off_target(split, n, ("position", "count", "shape", "exist"))


def _swap_eval(model: Any, sets: tuple, base: tuple, run: Callable[[Sequence[Any], Any], list[str]],
               paired: bool = False) -> dict[str, Any]:
    """Swap rate on red questions, accuracy drops on the other two sets (as floats, or rates with intervals)."""
    red, other, types = sets
    swap = [a == "purple" for a in run(red, "purple")]
    got_other = [a == s.answer for a, s in zip(run(other, None), other)]
    got_types = [a == s.answer for a, s in zip(run(types, None), types)]
    if paired:
        return {"swap": rate(swap), "other_colour_drop": drop(base[0], got_other),
                "other_types_drop": drop(base[1], got_types)}
    return {"swap": float(np.mean(swap)), "other_colour_drop": float(np.mean(base[0]) - np.mean(got_other)) * 100,
            "other_types_drop": float(np.mean(base[1]) - np.mean(got_types)) * 100}


def colour_subspace(model: Any, layers: Sequence[int], n: int = 50) -> dict[int, torch.Tensor]:
    """Per layer, ``mean(red) - mean(c)`` for every other colour ``c`` (answer-position states of train questions)."""
    means = {c: activations(model, colour_questions("train", c, n), layers) for c in COLOURS}
    return {l: torch.stack([means["red"][l].mean(0) - means[c][l].mean(0) for c in COLOURS if c != "red"])
            for l in layers}


def shift_part(model: Any, n_val: int, n_test: int, scales: Sequence[float],
               variants: Sequence[str] = SHIFT_VARIANTS, layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Shift of means shapes-llava -> shapes-llava-ft-swap on red colour questions, added to the base, per variant.

    ``conditional``: added only where the base model's answer is red;
    ``projected``: the shift projected onto the red-vs-other-colour subspace.
    """
    tuned = mmlens.load("shapes-llava-ft-swap")
    layers = list(layers if layers is not None else range(model.n_layers))
    t0 = time.time()
    vector = shift_vectors(model, tuned, colour_questions("train", "red", 100), layers,
                           metadata={"concept": "colour questions about red objects"})
    projected = project(vector, colour_subspace(model, layers))
    build_s = time.time() - t0

    def runner(v: SteeringVector, scale: float, variant: str) -> Callable:
        vec = projected.only(v.layers) if variant.startswith("projected") else v
        when = "red" if variant.endswith("conditional") else None
        return lambda samples, _want: answers(model, samples, vec, scale, only_when=when)

    val = _swap_sets("val", n_val)
    val_base = tuple(correct(model, s) for s in val[1:])
    sweep = []
    for variant in variants:
        for layer in layers:
            for scale in scales:
                row = {"variant": variant, "layer": layer, "scale": scale,
                       **_swap_eval(model, val, val_base, runner(vector.only([layer]), scale, variant))}
                sweep.append(row)
                print(f"shift {row}", file=sys.stderr, flush=True)
    test = _swap_sets("test", n_test)
    test_base = tuple(correct(model, s) for s in test[1:])
    result: dict[str, Any] = {"vector_seconds": round(build_s, 1), "sweep_val": sweep,
                              "fine_tuned_swap": rate(correct(tuned, test[0], want="purple")),
                              "vector_norms": {str(l): round(float(vector.vectors[l].norm()), 3) for l in layers},
                              "projected_norms": {str(l): round(float(projected.vectors[l].norm()), 3) for l in layers},
                              "variants": {}}
    for variant in variants:
        chosen = _choose([r for r in sweep if r["variant"] == variant], "swap",
                         lambda r: max(r["other_colour_drop"], r["other_types_drop"]) <= 2)
        run = runner(vector.only([chosen["layer"]]), chosen["scale"], variant)
        result["variants"][variant] = {"chosen": chosen, **_swap_eval(model, test, test_base, run, paired=True)}
        print(f"shift test {variant}: {result['variants'][variant]}", file=sys.stderr, flush=True)
    return result


#: MoReS layer sets tried on validation (-1: the decoder's input).
MORES_LAYERS = {"input": [EMBED], "L0-3": [0, 1, 2, 3], "input+L0-3": [EMBED, 0, 1, 2, 3]}


def mores_training_set(n: int) -> tuple[list[Any], list[str]]:
    """``n`` train colour questions (red relabelled purple) and ``n`` questions of other types naming no colour."""
    colour = [make_sample("train", i, "colour") for i in range(n)]
    others = off_target("train", n, ("position", "count", "shape", "exist"), start=10_000)
    samples = colour + others
    return samples, ["purple" if s.answer == "red" else s.answer for s in samples]


def mores_part(model: Any, n_val: int, n_test: int, scales: Sequence[float], ranks: Sequence[int] = (1, 4),
               steps: int = 40, layer_sets: Sequence[str] = tuple(MORES_LAYERS)) -> dict[str, Any]:
    """MoReS on image tokens only, trained (model frozen) to see red as purple; the same checks as the shift."""
    from mmlens.represent.subspace_steering import train

    samples, labels = mores_training_set(300)
    val = _swap_sets("val", n_val)
    val_base = tuple(correct(model, s) for s in val[1:])
    trained, sweep = {}, []
    for name in layer_sets:
        for rank in ranks:
            t0 = time.time()
            losses: list[float] = []
            steering = train(model, samples, labels, MORES_LAYERS[name], rank=rank, steps=steps,
                             log=lambda i, loss: losses.append(round(loss, 4)),
                             metadata={"objective": "red objects answered purple", "layers": name})
            train_s = time.time() - t0
            trained[(name, rank)] = steering
            for scale in scales:
                run = lambda ss, _w, st=steering, sc=scale: answers(model, ss, st, sc)  # noqa: E731
                row = {"layers": name, "rank": rank, "scale": scale, "train_seconds": round(train_s, 1),
                       "final_loss": float(np.mean(losses[-5:])), **_swap_eval(model, val, val_base, run)}
                sweep.append(row)
                print(f"mores {row}", file=sys.stderr, flush=True)
    best = max([r for r in sweep if max(r["other_colour_drop"], r["other_types_drop"]) <= 2] or sweep,
               key=lambda r: (round(r["swap"], 3), -r["rank"], -r["scale"]))
    chosen = {k: best[k] for k in ("layers", "rank", "scale")}
    steering = trained[(chosen["layers"], chosen["rank"])]
    steering.save(ROOT / "out" / "steering" / "mores.safetensors")
    test = _swap_sets("test", n_test)
    test_base = tuple(correct(model, s) for s in test[1:])
    run = lambda ss, _w: answers(model, ss, steering, chosen["scale"])  # noqa: E731
    # Beyond the trained question type: does the model now "see" purple? (never trained on these questions)
    tuned = mmlens.load("shapes-llava-ft-swap")
    exist = exist_questions("test", n_test)
    seen = {}
    for key, (qs, want) in exist.items():
        seen[key] = {"base": rate([a == want for a in answers(model, qs)]),
                     "mores": rate([a == want for a in answers(model, qs, steering, chosen["scale"])]),
                     "ft_swap": rate([a == want for a in answers(tuned, qs)])}
    return {"chosen": chosen, "trainable_parameters": sum(v.numel() for m in steering.maps.values() for v in m.values()),
            "sweep_val": sweep, "test": _swap_eval(model, test, test_base, run, paired=True),
            "fine_tuned_swap": rate(correct(tuned, test[0], want="purple")), "exist_questions": seen,
            "saved": "out/steering/mores.safetensors"}


def exist_questions(split: str, n: int) -> dict[str, tuple[list[Any], str]]:
    """About the red object of ``n`` red colour questions (its shape unique in the scene): purple? red?"""
    purple, red = [], []
    for s in colour_questions(split, "red", 2 * n):
        o = s.objects[s.target_objects[0]]
        if sum(x.shape == o.shape for x in s.objects) == 1 and len(purple) < n:
            for into, text in ((purple, f"is there a purple {o.shape} ?"), (red, f"is there a red {o.shape} ?")):
                into.append(SimpleNamespace(prompt=f"<image> {text}", image=s.image, answer=None, meta={}))
    return {"purple exists->yes": (purple, "yes"), "red exists->no": (red, "no")}
