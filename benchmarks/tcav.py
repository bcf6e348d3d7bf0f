"""TCAV and GCAV on shapes-llava: "red objects" on the answer "red", a random concept, disjoint probe sets, cost.

    python benchmarks/tcav.py [--per-set 50] [--n-test 200] [--out docs/figures] [--json]

Representations are the answer-position state (``lm.L{l}.resid`` at the last
prompt token) of colour questions (``val`` split): the concept "red objects"
is questions about red objects, counter-examples are random sets of colour
questions (any colour), 22 of them, 50 each. The TCAV target is the logit of
"red" on ``test`` colour questions about red objects (``--n-test``, split in
two disjoint halves for the agreement check); the layer is chosen on ``val``
questions (index 5,000 on). Significance: Kim et al.'s two-sided t-test of
10 concept-vs-random scores against 10 random-vs-random scores, alpha 0.05,
and also with a Bonferroni correction over layers. The random concept is a
further random set put through the same test.

GCAV (:mod:`mmlens.represent.gcav`) is fitted on the CAVs of the five colour
concepts (10 runs each, one per random set); its per-layer vectors are scored
the same way. Timing: the harvest (forward passes for activations, one
forward + backward for gradients) against TCAV proper (20 CAVs and the test).

With ``--json`` the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.data.shapes import COLOURS, make_sample  # noqa: E402
from mmlens.represent.concepts import activations, gradients, significance, tcav, tcav_score, train_cav  # noqa: E402
from mmlens.represent.gcav import direction_accuracy, fit_gcav  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_RANDOM = 10


def colour_questions(split: str, n: int, answer: str | None = None, start: int = 0) -> tuple[list[Any], int]:
    """``n`` colour questions from index ``start`` (about ``answer``-coloured objects if given); the next index."""
    out, i = [], start
    while len(out) < n:
        s = make_sample(split, i, "colour")
        i += 1
        if answer is None or s.answer == answer:
            out.append(s)
    return out, i


def per_layer_tcav(concept: dict, randoms: Sequence[dict], grads: dict, layers: Sequence[int]) -> list[dict]:
    return [tcav(concept[l], [r[l] for r in randoms], grads[l], l).summary() for l in layers]


def gcav_part(concepts: dict[str, dict], randoms: Sequence[dict], grads: dict, layers: Sequence[int]) -> dict:
    """Fit GCAV on every colour's CAV runs; TGCAV per layer with its significance; accuracy beside the CAVs'."""
    runs = {c: torch.stack([torch.stack([train_cav(concepts[c][l], randoms[i][l], l, seed=i).vector for l in layers])
                            for i in range(1, N_RANDOM + 1)]) for c in concepts}
    t0 = time.time()
    model = fit_gcav(runs)
    fit_s = time.time() - t0
    baseline = torch.stack([torch.stack([train_cav(randoms[0][l], randoms[i][l], l, seed=i).vector for l in layers])
                            for i in range(1, N_RANDOM + 1)])
    fused = torch.stack([model.fuse(run) for run in runs["red"]])  # (runs, layers, width)
    fused_random = torch.stack([model.fuse(run) for run in baseline])
    rows = []
    for j, l in enumerate(layers):
        scores = [tcav_score(grads[l], v) for v in fused[:, j]]
        random_scores = [tcav_score(grads[l], v) for v in fused_random[:, j]]
        p, sig = significance(scores, random_scores)
        acc_g = np.mean([direction_accuracy(concepts["red"][l], randoms[i][l], fused[i - 1, j], seed=i)
                         for i in range(1, N_RANDOM + 1)])
        acc_c = np.mean([direction_accuracy(concepts["red"][l], randoms[i][l], runs["red"][i - 1, j], seed=i)
                         for i in range(1, N_RANDOM + 1)])
        rows.append({"layer": l, "score": round(float(np.mean(scores)), 4), "p_value": p, "significant": sig,
                     "random_mean": round(float(np.mean(random_scores)), 4),
                     "accuracy_gcav": round(float(acc_g), 4), "accuracy_cav": round(float(acc_c), 4),
                     "cos_to_cav": round(float((fused[:, j] * runs["red"][:, j]).sum(-1).mean()), 4)})
    losses = model.fit_losses
    return {"layers": rows, "fit_seconds": round(fit_s, 2),
            "fit_losses": {"contrastive": round(losses.contrastive, 4), "reconstruction": round(losses.reconstruction, 4),
                           "relevance": round(losses.relevance, 4)}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-llava")
    p.add_argument("--per-set", type=int, default=50)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from mmlens.report.steer_pages import tcav_figure

    model = mmlens.load(a.model)
    layers = list(range(model.n_layers))
    t0 = time.time()
    concept_samples = {c: colour_questions("val", a.per_set, c)[0] for c in COLOURS}
    random_samples, start = [], 5000
    for _ in range(2 * N_RANDOM + 2):
        s, start = colour_questions("val", a.per_set, start=start)
        random_samples.append(s)
    concepts = {c: activations(model, s, layers) for c, s in concept_samples.items()}
    randoms = [activations(model, s, layers) for s in random_samples]
    n_harvested = sum(len(s) for s in concept_samples.values()) + sum(len(s) for s in random_samples)
    harvest_s = time.time() - t0
    t0 = time.time()
    val_targets = colour_questions("val", 100, "red", start=start)[0]
    test_targets = colour_questions("test", a.n_test, "red")[0]
    val_grads = gradients(model, val_targets, layers, "red")
    test_grads = gradients(model, test_targets, layers, "red")
    grad_s = time.time() - t0
    t0 = time.time()
    red_sets = randoms[:N_RANDOM + 1]
    val_rows = per_layer_tcav(concepts["red"], red_sets, val_grads, layers)
    tcav_s = (time.time() - t0) / len(layers)
    chosen = max(val_rows, key=lambda r: (r["significant"], r["score"]))["layer"]
    test_rows = per_layer_tcav(concepts["red"], red_sets, test_grads, layers)
    half = len(test_targets) // 2
    halves = [per_layer_tcav(concepts["red"], red_sets, {l: test_grads[l][part] for l in layers}, layers)
              for part in (slice(0, half), slice(half, None))]
    random_concept = per_layer_tcav(randoms[-1], randoms[N_RANDOM + 1:2 * N_RANDOM + 2], test_grads, layers)
    gcav = gcav_part(concepts, randoms, test_grads, layers)
    bonferroni = 0.05 / len(layers)
    figures = {
        "chosen_layer_on_val": chosen, "test_at_chosen": test_rows[chosen], "test": test_rows, "val": val_rows,
        "halves": [[{k: r[k] for k in ("layer", "score", "significant")} for r in h] for h in halves],
        "random_concept": random_concept,
        "random_concept_significant_bonferroni": [r["p_value"] < bonferroni for r in random_concept],
        "red_significant_bonferroni": [r["p_value"] < bonferroni for r in test_rows],
        "gcav": gcav,
        "std_across_layers": {"cav": round(float(np.std([r["score"] for r in test_rows])), 4),
                              "gcav": round(float(np.std([r["score"] for r in gcav["layers"]])), 4)},
        "timing": {"harvest_seconds": round(harvest_s, 1), "harvested_samples": n_harvested,
                   "gradient_seconds": round(grad_s, 1), "gradient_samples": len(val_targets) + len(test_targets),
                   "tcav_seconds_per_layer": round(tcav_s, 2), "random_sets": N_RANDOM}}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "tcav.json").write_text(json.dumps(figures, indent=1))
    tcav_figure({"red objects (CAV)": test_rows, "red objects (GCAV)": gcav["layers"], "random concept": random_concept},
                f"{a.model}: TCAV on the answer 'red' (test)").savefig(a.out / "tcav_layers.png")
    print(json.dumps({k: v for k, v in figures.items() if k not in ("val",)}), file=sys.stderr)
    emit(figures, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
