"""Which MINER configuration hurts most? A sweep chosen on validation data, never on test.

    python benchmarks/neurons_sweep.py [--model shapes-llava] [--json]

Scores every decoder neuron once (40 ``val`` samples per question type, all
five statistics), then, for every score (``mean+max``, ``frac``, ``mean``,
``max``, ``attn_frac``, ``attn_mean``), budget (modality, layer, global),
exclusivity and deactivation mode (zero, layer minimum), switches off the
top ``--ratio`` image neurons and measures the accuracy and p(answer) drop
on ``--eval-n`` *other* ``val`` samples per type (indices from 1000), against
the mean of ``--draws`` random sets of the same size and mode. The point is
to choose a configuration for ``benchmarks/neurons.py`` without looking at
its test split. With ``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from neurons import drops, eval_samples, evaluate, overall  # noqa: E402

import mmlens  # noqa: E402
from mmlens.data.shapes import QUESTION_TYPES, make_sample  # noqa: E402
from mmlens.neurons import modality_scores, random_neurons, select_modality_neurons  # noqa: E402

SCORES = ("mean+max", "frac", "mean", "max", "attn_frac", "attn_mean")
BUDGETS = ("modality", "layer", "global")
MODES = ("zero", "min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--score-n", type=int, default=40)
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--ratio", type=float, default=0.02)
    parser.add_argument("--label", default="image", help="modality to switch off")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    model = mmlens.load(args.model)
    data = {qt: [make_sample("val", i, qt) for i in range(args.score_n)] for qt in QUESTION_TYPES}
    tests = {qt: eval_samples(args.eval_n, "val", qt) for qt in QUESTION_TYPES}
    base = evaluate(model, tests)
    scores = modality_scores(model, data, statistics=("frac", "mean", "max", "attn_frac", "attn_mean"),
                             progress=False)
    k = select_modality_neurons(scores, ratio=args.ratio, budget="modality").metadata["k"]

    def switched_off(neurons, mode: str) -> tuple[float, float]:
        return drops(base, evaluate(model, tests, neurons.deactivate(model, mode)))

    random = {mode: np.mean([switched_off(random_neurons(model, k, seed=s), mode) for s in range(args.draws)], axis=0)
              for mode in MODES}
    rows = []
    grid = list(itertools.product(SCORES, BUDGETS, (False, True), MODES))
    for score, budget, exclusive, mode in track(grid, description="sweep", console=Console(stderr=True)):
        part = select_modality_neurons(scores, ratio=args.ratio, budget=budget, weights=score,
                                       exclusive=exclusive).where(label=args.label)
        if not len(part):
            continue
        drop, drop_p = switched_off(part, mode)
        rand, rand_p = (float(value) for value in random[mode])
        rows.append({"score": score, "budget": budget, "exclusive": exclusive, "mode": mode, "neurons": len(part),
                     "drop": round(drop, 4), "random_drop": round(rand, 4),
                     "ratio": round(drop / rand, 2) if rand > 0 else None,
                     "drop_p": round(drop_p, 4), "random_drop_p": round(rand_p, 4),
                     "ratio_p": round(drop_p / rand_p, 2) if rand_p > 0 else None})
    rows.sort(key=lambda r: -r["drop"])
    print(f"{model.name}: base accuracy {overall(base):.3f} on val[1000:{1000 + args.eval_n}] per type; "
          f"{args.label} neurons, {args.ratio:.0%} budget; random drop zero {random['zero'][0]:.4f}, "
          f"min {random['min'][0]:.4f}")
    for row in rows[:10]:
        print(row)
    emit({"model": model.name, "base_accuracy": round(overall(base), 4), "k": k, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
