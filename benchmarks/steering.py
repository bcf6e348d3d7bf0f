"""Steering shapes-llava: red -> blue at the answer position, on image tokens, and base -> ft-swap shift vectors.

    python benchmarks/steering.py [--part answer|image|shift|drift|reliance|mores|all] [--n-val 100] [--n-test 200]
        [--out DIR] [--json] [--variants plain,conditional,...] [--layers 1,2,3] [--ranks 1,4] [--steps 40]

Vectors are built on ``train`` samples, the layer and scale (and, on image
tokens, which patches) are chosen on ``val``, and the figures are measured on
``test`` with bootstrap 95% intervals (1,000 resamples). Each part writes its
sweep as JSON and a figure into ``--out`` (default ``docs/figures``):

- ``answer``: a mean difference of answer-position states (questions answered
  blue minus answered red) added at the last prompt position. Rate of "blue"
  on colour questions about red objects; accuracy on position and count
  questions that name no colour (the off-target set) against the unsteered model.
- ``image``: a mean difference of the decoder's input (``lm.embed``) over
  object patches (blue objects minus red objects), added only at one red
  object's patches. Three question types about that object, and colour
  questions about the other objects of the scene.
- ``shift``: the shift of means ``shapes-llava`` -> ``shapes-llava-ft-swap``
  on red colour questions (answer position), added to the base at the last
  prompt position. Swap rate (red answered purple), other colours, other types;
  per variant: ``plain``, ``conditional`` (added only where the base model
  answers red), ``projected`` (onto the red-vs-other-colour subspace) and both.
- ``mores``: a MoReS-style subspace steering on image tokens only
  (:mod:`mmlens.represent.subspace_steering`), trained with the model frozen
  to answer red objects purple and everything else as before; the same three
  checks as ``shift``, and exist questions ("is there a purple <shape>?")
  it was never trained on, beside ``-ft-swap``.

With ``--json`` the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.data.shapes import COLOURS, make_sample  # noqa: E402
from mmlens.represent.concepts import EMBED, activations, object_patches  # noqa: E402
from mmlens.represent.steering import SteeringVector, answers, mean_difference, project, shift_vectors  # noqa: E402

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


def answer_part(model: Any, n_val: int, n_test: int, scales: Sequence[float]) -> dict[str, Any]:
    """Red -> blue at the answer position."""
    layers = list(range(model.n_layers))
    t0 = time.time()
    vector = mean_difference(activations(model, colour_questions("train", "red", 100), layers),
                             activations(model, colour_questions("train", "blue", 100), layers),
                             {"kind": "mean-difference", "from": "red", "to": "blue", "where": "last"})
    build_s = time.time() - t0
    val_red, val_off = colour_questions("val", "red", n_val), off_target("val", n_val)
    base_off = correct(model, val_off)
    sweep = []
    for layer in layers:
        for scale in scales:
            blue = correct(model, val_red, vector.only([layer]), scale, want="blue")
            off = correct(model, val_off, vector.only([layer]), scale)
            sweep.append({"layer": layer, "scale": scale, "blue": float(np.mean(blue)),
                          "off_target_drop": float(np.mean(base_off) - np.mean(off)) * 100})
            print(f"answer L{layer} x{scale}: blue {np.mean(blue):.2f} off-target drop {sweep[-1]['off_target_drop']:.1f}",
                  file=sys.stderr, flush=True)
    chosen = _choose(sweep, "blue", lambda r: r["off_target_drop"] <= 5)
    test_red, test_off = colour_questions("test", "red", n_test), off_target("test", n_test)
    v = vector.only([chosen["layer"]])
    before = correct(model, test_off)
    result = {"chosen": chosen, "vector_seconds": round(build_s, 1), "sweep_val": sweep,
              "test_blue": rate(correct(model, test_red, v, chosen["scale"], want="blue")),
              "test_off_target_before": rate(before),
              "test_off_target_drop": drop(before, correct(model, test_off, v, chosen["scale"]))}
    return result


def _choose(sweep: list[dict], key: str, allowed: Callable[[dict], bool]) -> dict:
    """The allowed setting with the highest ``key`` (ties: the smaller scale); else the highest ``key``."""
    pool = [r for r in sweep if allowed(r)] or sweep
    best = max(pool, key=lambda r: (round(r[key], 3), -r["scale"]))
    return {k: best[k] for k in ("layer", "scale") if k in best} | {k: best[k] for k in best if k.startswith("min_")}


def image_questions(split: str, n: int, min_cover: float) -> dict[str, Any]:
    """Scenes whose colour question asks about a red object; three questions about it, colour questions about others."""
    rows, i = [], 0
    while len(rows) < n:
        s = make_sample(split, i, "colour")
        i += 1
        if s.answer == "red":
            rows.append(s)

    def q(s: Any, text: str, answer: str) -> Any:
        return SimpleNamespace(prompt=f"<image> {text}", image=s.image, answer=answer, meta={})

    sets: dict[str, list] = {"colour->blue": [], "blue exists->yes": [], "red exists->no": [], "others": []}
    where: dict[str, list] = {k: [] for k in sets}
    for s in rows:
        o = s.objects[s.target_objects[0]]
        patches = object_patches(o, min_cover=min_cover)
        for key, text, answer in (("colour->blue", f"what colour is the {o.shape} ?", "blue"),
                                  ("blue exists->yes", f"is there a blue {o.shape} ?", "yes"),
                                  ("red exists->no", f"is there a red {o.shape} ?", "no")):
            sets[key].append(q(s, text, answer))
            where[key].append(patches)
        for p in s.objects:
            if p is not o and sum(x.shape == p.shape for x in s.objects) == 1:
                sets["others"].append(q(s, f"what colour is the {p.shape} ?", p.colour))
                where["others"].append(patches)
    return {"sets": sets, "where": where}


def _image_eval(model: Any, data: dict, vector: SteeringVector | None, scale: float) -> dict[str, list[bool]]:
    return {k: correct(model, ss, vector, scale, data["where"][k]) if vector is not None else correct(model, ss)
            for k, ss in data["sets"].items()}


def image_part(model: Any, n_val: int, n_test: int, scales: Sequence[float], quick: bool = True) -> dict[str, Any]:
    """Red -> blue on one red object's patches only (the harder test)."""
    # Edits at L0 and later did nothing in a first look (the decoder reads colour off image tokens in
    # layer 0's attention); adding the vector at every layer before the last changed nothing beyond the input.
    layer_sets = {"input": [EMBED], "input+L0-2": [EMBED] + list(range(model.n_layers - 1))}
    if quick:
        layer_sets.pop("input+L0-2")
    covers = (0.25, 0.01)
    layers = sorted({l for ls in layer_sets.values() for l in ls})
    t0 = time.time()
    red_s, red_w = object_sets("train", 100, "red")
    blue_s, blue_w = object_sets("train", 100, "blue")
    vector = mean_difference(activations(model, red_s, layers, red_w), activations(model, blue_s, layers, blue_w),
                             {"kind": "mean-difference", "from": "red", "to": "blue", "where": "object patches"})
    build_s = time.time() - t0
    sweep = []
    for cover in covers:
        val = image_questions("val", n_val, cover)
        base_others = np.mean(_image_eval(model, {"sets": {"others": val["sets"]["others"]}, "where": {}}, None, 0)["others"])
        for name, ls in layer_sets.items():
            for scale in scales:
                got = {k: float(np.mean(v)) for k, v in _image_eval(model, val, vector.only(ls), scale).items()}
                row = {"layers": name, "min_cover": cover, "scale": scale, **got,
                       "others_drop": float(base_others - got["others"]) * 100}
                row["mean_target"] = (got["colour->blue"] + got["blue exists->yes"] + got["red exists->no"]) / 3
                sweep.append(row)
                print(f"image {name} cover {cover} x{scale}: {got}", file=sys.stderr, flush=True)
    best = max([r for r in sweep if r["others_drop"] <= 5] or sweep, key=lambda r: (round(r["mean_target"], 3), -r["scale"]))
    chosen = {"layers": best["layers"], "min_cover": best["min_cover"], "scale": best["scale"]}
    test = image_questions("test", n_test, chosen["min_cover"])
    base = _image_eval(model, test, None, 0)
    steered = _image_eval(model, test, vector.only(layer_sets[chosen["layers"]]), chosen["scale"])
    return {"chosen": chosen, "vector_seconds": round(build_s, 1), "sweep_val": sweep,
            "test": {k: rate(v) for k, v in steered.items()}, "test_base": {k: rate(v) for k, v in base.items()},
            "test_others_drop": drop(base["others"], steered["others"])}


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


def drift_part(model: Any, n_val: int, n_test: int, scales: Sequence[float]) -> dict[str, Any]:
    """Concepts of answer-position states (k-means, k = 5) tracked along the dense ft-swap checkpoints."""
    from mmlens.represent.drift import track
    from mmlens.zoo.derivatives import load_ft_swap
    from mmlens.models.loading import wrap

    work = ROOT / "out" / "zoo-ft" / "shapes-llava-ft-swap-early"
    steps = sorted(int(p.stem.split("-")[1]) for p in work.glob("step-*.safetensors"))
    if not steps:
        raise SystemExit(f"no checkpoints in {work}: python -c \"from mmlens.represent.drift import swap_checkpoints; "
                         f"swap_checkpoints('{work}')\"")
    samples = [make_sample("test", i, "colour") for i in range(n_test)]
    layer = model.n_layers - 1
    states = {0: activations(model, samples, [layer])[layer]}
    swap = {0: float(np.mean([a == "purple" for a, s in zip(answers(model, samples), samples) if s.answer == "red"]))}
    for step in steps:
        tuned = wrap(*load_ft_swap(checkpoint=step, work=work), name=f"ft-swap@{step}")
        states[step] = activations(tuned, samples, [layer])[layer]
        got = answers(tuned, samples)
        swap[step] = float(np.mean([a == "purple" for a, s in zip(got, samples) if s.answer == "red"]))
    drift = track(states, [s.answer for s in samples], k=5)
    return {"layer": layer, "swap_rate": swap, "drift": drift.summary([s.id for s in samples]),
            "sweep_val": [{"scale": st, "layer": layer, "swap": swap[st]} for st in sorted(swap)]}


def reliance_part(model: Any, n_val: int, n_test: int, scales: Sequence[float]) -> dict[str, Any]:
    """P(answer) drop per layer when image / text token residuals are replaced by their mean (test, every type)."""
    from mmlens.data.shapes import QUESTION_TYPES
    from mmlens.represent.reliance import modality_reliance

    per_type = max(1, n_test // len(QUESTION_TYPES))
    samples = [make_sample("test", i, qt) for qt in QUESTION_TYPES for i in range(per_type)]
    result = modality_reliance(model, samples).summary()
    return {**result, "sweep_val": []}


def _figure(name: str, result: dict) -> Any:
    from mmlens.report.steer_pages import drift_figure, layer_figure, sweep_figure

    if name == "reliance":
        return layer_figure({"image tokens": result["image_drop"], "text tokens": result["text_drop"]},
                            "P(answer) drop, residual replaced by its mean", "mean P(answer) drop",
                            ["input"] + [str(l) for l in result["layers"][1:]])
    if name == "drift":
        d = result["drift"]
        curves = {f"red -> {c}": d["toward"]["red"][c] for c in d["toward"]["red"]}
        curves.update({f"{c} moved": d["moved"][c] for c in d["concepts"] if c != "red"})
        curves["red moved"] = d["moved"]["red"]
        return drift_figure(d["steps"], curves, "answer-position concepts along ft-swap (k-means, k=5)",
                            "toward: 1 = arrived; moved: / typical gap")
    if name in ("shift", "mores"):  # one line per variant and layer (shift) or layer set and rank (MoReS)
        rows = [{"layers": f"{r['variant']} L{r['layer']}" if name == "shift" else f"{r['layers']} rank {r['rank']}",
                 **{k: r[k] for k in ("scale", "swap", "other_colour_drop", "other_types_drop")}}
                for r in result["sweep_val"]]
        return sweep_figure(rows, f"{name} (validation sweep)", ["swap", "other_colour_drop", "other_types_drop"])
    return sweep_figure(result["sweep_val"], f"{name} (validation sweep)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-llava")
    p.add_argument("--part", choices=("answer", "image", "shift", "drift", "reliance", "mores", "all"), default="all")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--scales", default="0.25,0.5,0.75,1,1.5,2")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument("--variants", default=",".join(SHIFT_VARIANTS), help="shift: variants to sweep")
    p.add_argument("--layers", default=None, help="shift: decoder layers to sweep (default all)")
    p.add_argument("--ranks", default="1,4", help="mores: ranks to try")
    p.add_argument("--steps", type=int, default=40, help="mores: training steps per setting")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = mmlens.load(a.model)
    scales = [float(s) for s in a.scales.split(",")]
    parts = {"answer": answer_part, "image": image_part, "shift": shift_part, "drift": drift_part,
             "reliance": reliance_part, "mores": mores_part}
    figures = {}
    a.out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        if a.part not in (name, "all"):
            continue
        t0 = time.time()
        extra: dict[str, Any] = {}
        if name == "shift":
            extra = {"variants": a.variants.split(","),
                     "layers": [int(l) for l in a.layers.split(",")] if a.layers else None}
        if name == "mores":
            extra = {"ranks": [int(r) for r in a.ranks.split(",")], "steps": a.steps}
        figures[name] = part(model, a.n_val, a.n_test, scales, **extra)
        figures[name]["seconds"] = round(time.time() - t0, 1)
        (a.out / f"steering_{name}.json").write_text(json.dumps(figures[name], indent=1))
        _figure(name, figures[name]).savefig(a.out / f"steering_{name}.png")
        print(json.dumps({k: v for k, v in figures[name].items() if k != "sweep_val"}), file=sys.stderr, flush=True)
    emit(figures, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
