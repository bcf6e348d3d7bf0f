"""Domain neurons on domains-llava: DAPE domain specificity (after MMNeuron) and MINER, chosen on val, reported on test.

    python benchmarks/neurons.py --world domains [--model domains-llava] [--json]
    python benchmarks/neurons_domains.py [...]                          # the same

Domains are the four image domains of :mod:`mmlens.data.domains` (shapes,
glyphs, cells, maps). Neurons are scored on ``--score-n`` val samples per
question type (indices 0..), settings are chosen on ``--val-n`` further val
samples per type (from index 1000), and figures are reported on ``--eval-n``
test samples per type. A domain's accuracy is the mean over its samples
(equal counts per question type). Every figure on test carries a bootstrap
95% interval over test samples (resampled within each domain, paired across
arms); a claim holds when the interval's lower bound clears its bar.

- **DAPE** (``domain``): per tower set (vision tower + projector + decoder, and
  the decoder alone), the top ``--domain-ratio`` neurons by low DAPE entropy
  (:func:`mmlens.neurons.select_domain_neurons`) per domain are switched off
  and every domain is evaluated: the drop matrix. The claim: each domain's own
  drop is at least 2x the mean drop over the other domains (statistic
  ``own - 2 x mean(others)``, lower bound > 0). Chosen on val: decoder tokens
  (``all``/``last``) and the switch-off mode (``zero``/``min``).
- **MINER** (``modality``): the top image-specific decoder neurons at 1, 2
  and 5% against the mean of ``--draws`` random sets of the same size. The
  claim: at 2%, drop >= 3x the random drop (statistic ``drop - 3 x random``,
  lower bound > 0; the ratio and its interval are reported beside it).
  Chosen on val at 2%: the score weights, the budget and the switch-off
  mode (``zero``/``min``), by the claim's statistic.

With ``--json`` the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.data import domains as world  # noqa: E402
from mmlens.data import shapes as shapes_world  # noqa: E402
from mmlens.neurons import (  # noqa: E402
    DomainScores, domain_scores, modality_scores, random_neurons, select_domain_neurons, select_modality_neurons,
)
from mmlens.neurons.sites import tower_of  # noqa: E402
from mmlens.zoo.evaluate import answer_probs  # noqa: E402

VAL_OFFSET = 1000  # val indices below this are the scoring samples
TOWER_SETS = {"full": ("lm", "vision", "projector"), "decoder": ("lm",)}
Outcomes = dict[str, np.ndarray]  # domain -> 0/1 right answers, one per sample


def world_sets(split: str, n: int, offset: int = 0, sets: str = "domains") -> dict[str, list]:
    """``n`` samples per question type of every domain, from index ``offset`` of ``split``.

    ``sets="shapes"``: the shapes world alone, one set per question type (for
    shapes-llava; the DAPE part then has question types as domains).

    Example:
        >>> {d: len(s) for d, s in world_sets("val", 2).items()}
        {'shapes': 10, 'glyphs': 4, 'cells': 4, 'maps': 6}
    """
    if sets == "shapes":
        return {qt: [shapes_world.make_sample(split, offset + i, qt) for i in range(n)]
                for qt in shapes_world.QUESTION_TYPES}
    return {d: [world.make_sample(d, split, offset + i, qt) for qt in world.question_types(d) for i in range(n)]
            for d in world.NAMES}


def outcomes(model: mmlens.Model, tests: dict[str, list], context=None) -> Outcomes:
    """Per domain, 1 where the greedy answer token is right, inside ``context`` (a switch-off)."""
    tok = model.processor.tokenizer
    out = {}
    with context or nullcontext():
        for d, samples in tests.items():
            probs = answer_probs(model.hf, model.processor, samples)
            answers = torch.tensor(tok.convert_tokens_to_ids([s.answer for s in samples]))
            out[d] = (probs.argmax(-1) == answers).numpy().astype(np.float64)
    return out


def bootstrap(statistic, arms: list[Outcomes], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``statistic(*arms)``, resampling samples within each domain, the same for all arms.

    Example:
        >>> arm = {"a": np.array([1.0, 0.0, 1.0, 1.0])}
        >>> lo, hi = bootstrap(lambda x: x["a"].mean(), [arm])
        >>> 0.0 <= lo <= 0.75 <= hi <= 1.0
        True
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        picks = {d: rng.integers(0, len(v), len(v)) for d, v in arms[0].items()}
        values.append(statistic(*({d: arm[d][picks[d]] for d in arm} for arm in arms)))
    # "nearest": no interpolation, so a ratio's infinite resamples (a zero denominator) stay ordered
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [2.5, 97.5], method="nearest")
    return round(float(lo), 4), round(float(hi), 4)


def mean_accuracy(arm: Outcomes) -> float:
    """Mean over domains of each domain's accuracy."""
    return float(np.mean([v.mean() for v in arm.values()]))


def drop_matrix(base: Outcomes, switched: dict[str, Outcomes]) -> dict[str, dict[str, float]]:
    """Rows: domain switched off; columns: domain evaluated; accuracy drop."""
    return {d: {e: round(float(base[e].mean() - arm[e].mean()), 4) for e in base} for d, arm in switched.items()}


def specificity(own: str, base: Outcomes, arm: Outcomes) -> tuple[float, float]:
    """(own drop - 2 x mean other drop, own drop / mean other drop) when ``own``'s neurons are off."""
    drops = {e: base[e].mean() - arm[e].mean() for e in base}
    others = float(np.mean([v for e, v in drops.items() if e != own]))
    if others > 0:
        return float(drops[own] - 2 * others), float(drops[own] / others)
    # no other domain lost anything: x/0 is infinite, 0/0 (nothing moved at all) is undefined
    return float(drops[own] - 2 * others), float("inf") if drops[own] > 0 else float("nan")


def _subset(scores: DomainScores, towers: tuple[str, ...]) -> DomainScores:
    sites = [s for s in scores.sites if tower_of(s) in towers]
    return DomainScores(sites, scores.domains, {s: scores.active[s] for s in sites}, {s: scores.tokens[s] for s in sites})


def _switch_each(model, chosen, tests, mode) -> dict[str, Outcomes]:
    return {d: outcomes(model, tests, chosen.where(label=d).deactivate(model, mode))
            for d in tests if len(chosen.where(label=d))}


def dape_claim(model, score, val, test, args) -> dict:
    """The drop matrices (full and decoder-only), settings chosen on val, figures on test."""
    scores = {tokens: domain_scores(model, score, towers=TOWER_SETS["full"], lm_tokens=tokens, progress=False)
              for tokens in ("all", "last")}
    base_val, base_test = outcomes(model, val), outcomes(model, test)
    out = {}
    for name, towers in TOWER_SETS.items():
        grid = {}
        for tokens, mode in itertools.product(("all", "last"), ("zero", "min")):
            chosen = select_domain_neurons(_subset(scores[tokens], towers), ratio=args.domain_ratio)
            switched = _switch_each(model, chosen, val, mode)
            margins = [specificity(d, base_val, arm)[0] for d, arm in switched.items()]
            grid[f"{tokens}/{mode}"] = {"passing": sum(m > 0 for m in margins), "mean_margin": round(float(np.mean(margins)), 4)
                                        if margins else None, "drop_matrix": drop_matrix(base_val, switched)}
        best = max(grid, key=lambda k: (grid[k]["passing"], grid[k]["mean_margin"] or -1.0))
        tokens, mode = best.split("/")
        chosen = select_domain_neurons(_subset(scores[tokens], towers), ratio=args.domain_ratio)
        switched = _switch_each(model, chosen, test, mode)
        claim = {}
        for d, arm in switched.items():
            margin, ratio = specificity(d, base_test, arm)
            claim[d] = {"margin": round(margin, 4), "margin_ci": bootstrap(lambda b, a, d=d: specificity(d, b, a)[0],
                                                                          [base_test, arm], args.boot),
                        "ratio": round(ratio, 2), "ratio_ci": bootstrap(lambda b, a, d=d: specificity(d, b, a)[1],
                                                                        [base_test, arm], args.boot),
                        "own_drop_ci": bootstrap(lambda b, a, d=d: b[d].mean() - a[d].mean(), [base_test, arm], args.boot)}
            claim[d]["holds"] = claim[d]["margin_ci"][0] > 0
        out[name] = {"towers": list(towers), "chosen_on_val": best, "val_grid": grid,
                     "neurons": {d: {t: len(chosen.where(label=d).where(tower=t)) for t in towers} for d in test},
                     "drop_matrix": drop_matrix(base_test, switched), "claim": claim,
                     "largest_drop": max((v for row in drop_matrix(base_test, switched).values() for v in row.values()),
                                         default=0.0)}
    return out


def _drops(base: Outcomes, top: Outcomes, *draws: Outcomes) -> tuple[float, float]:
    """(drop of the top set, mean drop of the random sets) in mean accuracy over domains."""
    return (mean_accuracy(base) - mean_accuracy(top),
            float(np.mean([mean_accuracy(base) - mean_accuracy(r) for r in draws])))


def _ratio(*arms: Outcomes) -> float:
    top, rand = _drops(*arms)
    return top / rand if rand > 0 else float("inf") if top > 0 else float("nan")


def _margin(*arms: Outcomes) -> float:
    top, rand = _drops(*arms)
    return top - 3 * rand  # the claim: top >= 3 x random


def miner_claim(model, score, val, test, args) -> dict:
    """Image-specific decoder neurons vs random sets at 1/2/5%; weights, budget and mode chosen on val at 2%.

    The val criterion is the claim's own statistic, ``drop - 3 x random drop``
    (a ratio is 0/0 or x/0 when random sets change no answer).
    """
    scores = modality_scores(model, score, statistics=("frac", "mean", "max"), progress=False)
    base_val, base_test = outcomes(model, val), outcomes(model, test)
    grid, random_val = {}, {}
    for weights, budget, mode in itertools.product(("mean+max", "frac", "mean"), ("modality", "layer"), ("zero", "min")):
        chosen = select_modality_neurons(scores, ratio=0.02, budget=budget, weights=weights)
        k = chosen.metadata["k"]
        if (k, mode) not in random_val:
            random_val[k, mode] = [outcomes(model, val, random_neurons(model, k, seed=s).deactivate(model, mode))
                                   for s in range(args.draws)]
        top = outcomes(model, val, chosen.where(label="image").deactivate(model, mode))
        arms = [base_val, top, *random_val[k, mode]]
        grid[f"{weights}/{budget}/{mode}"] = {"margin": round(_margin(*arms), 4), "ratio": round(_ratio(*arms), 2)}
    best = max(grid, key=lambda c: grid[c]["margin"])
    weights, budget, mode = best.split("/")
    curve = {}
    for ratio in (0.01, 0.02, 0.05):
        chosen = select_modality_neurons(scores, ratio=ratio, budget=budget, weights=weights)
        k = chosen.metadata["k"]
        draws = [outcomes(model, test, random_neurons(model, k, seed=s).deactivate(model, mode))
                 for s in range(args.draws)]
        top = outcomes(model, test, chosen.where(label="image").deactivate(model, mode))
        arms = [base_test, top, *draws]
        curve[str(ratio)] = {
            "k": k, "image_drop": round(mean_accuracy(base_test) - mean_accuracy(top), 4),
            "image_drop_ci": bootstrap(lambda b, t: mean_accuracy(b) - mean_accuracy(t), [base_test, top], args.boot),
            "random_drop": round(float(np.mean([mean_accuracy(base_test) - mean_accuracy(r) for r in draws])), 4),
            "random_drops": [round(mean_accuracy(base_test) - mean_accuracy(r), 4) for r in draws],
            "ratio": round(_ratio(*arms), 2), "ratio_ci": bootstrap(_ratio, arms, args.boot),
            "margin": round(_margin(*arms), 4), "margin_ci": bootstrap(_margin, arms, args.boot),
            "image_drop_by_domain": {d: round(float(base_test[d].mean() - top[d].mean()), 4) for d in base_test}}
    return {"chosen_on_val": best, "val_grid": grid, "curve": curve,
            "holds_at_2pct": curve["0.02"]["margin_ci"][0] > 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="domains-llava", help="zoo name or folder")
    parser.add_argument("--score-n", type=int, default=30, help="val samples per question type to score on")
    parser.add_argument("--val-n", type=int, default=50, help="val samples per question type to choose settings on")
    parser.add_argument("--eval-n", type=int, default=100, help="test samples per question type to report on")
    parser.add_argument("--domain-ratio", type=float, default=0.01)
    parser.add_argument("--draws", type=int, default=5, help="random sets to compare against (MINER)")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--parts", default="domain,modality", help="comma-separated checks to run")
    parser.add_argument("--sets", default="domains", choices=["domains", "shapes"],
                        help="domains: the four image domains; shapes: shapes-world question types (shapes-llava)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # shared cores; the model is tiny
    model = mmlens.load(args.model)
    score = world_sets("val", args.score_n, sets=args.sets)
    val, test = world_sets("val", args.val_n, VAL_OFFSET, args.sets), world_sets("test", args.eval_n, sets=args.sets)
    base = outcomes(model, test)
    figures: dict = {"model": model.name, "sets": args.sets, "score_n": args.score_n, "val_n": args.val_n, "eval_n_per_type": args.eval_n,
                     "base_by_domain": {d: round(float(v.mean()), 4) for d, v in base.items()},
                     "eval_n_by_domain": {d: len(v) for d, v in base.items()}}
    parts = set(args.parts.split(","))
    if "domain" in parts:
        figures["dape"] = dape_claim(model, score, val, test, args)
    if "modality" in parts:
        figures["miner"] = miner_claim(model, score, val, test, args)
    report(figures)
    emit(figures, args.json)
    return 0


def report(figures: dict) -> None:
    print(f"model {figures['model']}: test accuracy by domain {figures['base_by_domain']} "
          f"(samples {figures['eval_n_by_domain']})")
    for name, dom in figures.get("dape", {}).items():
        print(f"\nDAPE 1% neurons, {name} ({'+'.join(dom['towers'])}), chosen on val: {dom['chosen_on_val']}; "
              f"neurons {dom['neurons']}")
        print("accuracy drop, rows: domain switched off, columns: domain evaluated")
        names = list(figures["base_by_domain"])
        print(" " * 8 + "".join(f"{d:>9}" for d in names) + "   own-2x others [95% CI]   ratio [95% CI]")
        for d, row in dom["drop_matrix"].items():
            c = dom["claim"][d]
            print(f"{d:<8}" + "".join(f"{row[e]:>9.3f}" for e in names)
                  + f"   {c['margin']:.3f} {c['margin_ci']}   {c['ratio']} {c['ratio_ci']}")
    if "miner" in figures:
        m = figures["miner"]
        print(f"\nMINER image neurons, chosen on val (weights/budget/mode): {m['chosen_on_val']} "
              f"(val: {m['val_grid'][m['chosen_on_val']]})")
        for r, row in m["curve"].items():
            print(f"  {float(r):.0%} (k={row['k']}): drop {row['image_drop']:.3f} {row['image_drop_ci']}, random "
                  f"{row['random_drop']:.3f} {row['random_drops']}, ratio {row['ratio']} {row['ratio_ci']}, "
                  f"drop-3x random {row['margin']:.3f} {row['margin_ci']}")
        print(f"  claim at 2% holds (lower bound of drop - 3x random > 0): {m['holds_at_2pct']}")


if __name__ == "__main__":
    sys.exit(main())
