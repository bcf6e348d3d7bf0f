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
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.data.shapes import make_sample  # noqa: E402
from mmlens.represent.concepts import EMBED, activations, object_patches  # noqa: E402
from mmlens.represent.steering import SteeringVector, answers, mean_difference  # noqa: E402
from steering_common import (ROOT, _choose, colour_questions, correct, drop, object_sets,  # noqa: E402
                             off_target, rate)
from steering_swap import SHIFT_VARIANTS, mores_part, shift_part  # noqa: E402

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
