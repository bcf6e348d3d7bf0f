"""Neurons on the shipped model: do modality-, domain-specific and coupled units matter where they should?

    python benchmarks/neurons.py [--model shapes-llava] [--json]
    python benchmarks/neurons.py --world domains [--model domains-llava] [--json]   # benchmarks/neurons_domains.py

Neurons are scored on the ``val`` split and accuracy (greedy first answer
token = ground truth) is measured on the held-out ``test`` split, ``--eval-n``
samples per question type (``--eval-split val`` measures on ``val`` samples
from index 1000 instead, apart from the scoring samples: choose settings
there, report them on ``test``). Figures:

- modality (MINER): per modality, the accuracy drop from deactivating its top
  ``--ratio`` of decoder neurons against the mean drop over ``--draws`` random
  sets of the same size, and their ratio (the claim: at least 3x for image);
  the same at larger budgets (``--curve``); where each modality's neurons sit
  in depth;
- domains (MMNeuron over decoder + vision tower + projector; ``--domains
  question`` uses question types, ``style`` the image backgrounds): accuracy
  drop matrix, domain switched off x domain evaluated;
- coupled (DEAN): weights important to colour and shape questions but not to
  the others, zeroed; accuracy drop per question type;
- speed: scoring time against a bare forward over the same samples.

With ``--json`` the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.data.shapes import BACKGROUNDS, QUESTION_TYPES, make_sample  # noqa: E402
from mmlens.neurons import (  # noqa: E402
    coupled_weights,
    domain_scores,
    modality_scores,
    random_neurons,
    select_domain_neurons,
    select_modality_neurons,
)
from mmlens.neurons._batches import chunks, prepare_samples  # noqa: E402
from mmlens.zoo.evaluate import answer_probs  # noqa: E402


def evaluate(model: mmlens.Model, tests: dict[str, list], context=None) -> dict[str, dict[str, float]]:
    """Per question type: accuracy and mean probability of the right answer, inside ``context``."""
    tok = model.processor.tokenizer
    out = {}
    with context or nullcontext():
        for qt, samples in tests.items():
            probs = answer_probs(model.hf, model.processor, samples)
            answers = torch.tensor(tok.convert_tokens_to_ids([s.answer for s in samples]))
            right = probs.argmax(-1) == answers
            out[qt] = {"acc": float(right.float().mean()), "p": float(probs[torch.arange(len(samples)), answers].mean())}
    return out


EVAL_OFFSET = {"test": 0, "val": 1000}  # val's first indices are the scoring samples


def eval_samples(n: int, split: str = "test", question_type: str | None = None) -> list:
    """The first ``n`` evaluation samples of ``split`` (of one question type, or of any)."""
    return [make_sample(split, EVAL_OFFSET[split] + i, question_type) for i in range(n)]


def overall(result: dict[str, dict[str, float]], key: str = "acc") -> float:
    return float(np.mean([v[key] for v in result.values()]))


def drops(base: dict[str, dict[str, float]], result: dict[str, dict[str, float]]) -> tuple[float, float]:
    """How far mean accuracy and mean p(right answer) fell from ``base`` to ``result``."""
    return overall(base) - overall(result), overall(base, "p") - overall(result, "p")


def modality_check(model, data, tests, base, args) -> dict:
    started = time.perf_counter()
    scores = modality_scores(model, data, statistics=("frac", "mean", "max", "attn_frac", "attn_mean"),
                             memory_budget=args.memory_budget, progress=False)
    seconds = time.perf_counter() - started
    chosen = select_modality_neurons(scores, ratio=args.ratio, budget=args.budget, weights=args.score,
                                     exclusive=args.exclusive)
    k = chosen.metadata["k"]
    random_drops = []
    for seed in range(args.draws):
        drawn = evaluate(model, tests, random_neurons(model, k, seed=seed).deactivate(model, args.mode))
        random_drops.append(drops(base, drawn))
    rand_acc, rand_p = (float(np.mean(column)) for column in zip(*random_drops))
    per_modality = {}
    for label in chosen.label_names:
        part = chosen.where(label=label)
        result = evaluate(model, tests, part.deactivate(model, args.mode))
        drop, drop_p = drops(base, result)
        per_modality[label] = {
            "neurons": len(part), "drop": round(drop, 4), "random_drop": round(rand_acc, 4),
            "ratio": round(drop / rand_acc, 2) if rand_acc > 0 else None,
            "drop_p": round(drop_p, 4), "random_drop_p": round(rand_p, 4),
            "ratio_p": round(drop_p / rand_p, 2) if rand_p > 0 else None,
            "drop_by_type": {qt: round(base[qt]["acc"] - result[qt]["acc"], 4) for qt in tests},
        }
    curve = {}
    for ratio in [float(r) for r in args.curve.split(",") if r]:
        bigger = select_modality_neurons(scores, ratio=ratio, budget=args.budget, weights=args.score,
                                         exclusive=args.exclusive)
        drawn = [overall(base) - overall(evaluate(model, tests, random_neurons(model, bigger.metadata["k"], seed=seed)
                                                  .deactivate(model, args.mode))) for seed in range(args.draws)]
        curve[str(ratio)] = {"random": round(float(np.mean(drawn)), 4), **{
            label: round(overall(base) - overall(evaluate(model, tests, bigger.where(label=label).deactivate(
                model, args.mode))), 4) for label in bigger.label_names}}
    labels, counts = chosen.depth_counts(model.n_layers)
    glob = select_modality_neurons(scores, ratio=args.ratio, budget="global", weights=args.score)
    glob_labels, glob_counts = glob.depth_counts(model.n_layers)
    keys = {label: set(zip(chosen.where(label=label).sites, chosen.where(label=label).indices.tolist()))
            for label in labels}
    return {
        "k": k, "per_modality": per_modality, "curve": curve, "random_drops": [round(d[0], 4) for d in random_drops],
        "depth": {label: row.tolist() for label, row in zip(labels, counts)},
        "mean_depth": {label: round(float((row * np.arange(len(row))).sum() / max(row.sum(), 1)), 2)
                       for label, row in zip(labels, counts)},
        "global_depth": {label: row.tolist() for label, row in zip(glob_labels, glob_counts)},
        "overlap_image_text": len(keys.get("image", set()) & keys.get("text", set())),
        "scoring_seconds": round(seconds, 3),
    }


def domain_sets(kind: str, score_n: int, eval_n: int, split: str = "test") -> tuple[dict, dict]:
    """Scoring and held-out sets per domain: question types, or image styles (the scene background)."""
    if kind == "question":
        return ({qt: [make_sample("val", i, qt) for i in range(score_n)] for qt in QUESTION_TYPES},
                {qt: eval_samples(eval_n, split, qt) for qt in QUESTION_TYPES})
    by_style = lambda pool: {b: [s for s in pool if s.meta["scene"].background == b] for b in BACKGROUNDS}  # noqa: E731
    total = len(QUESTION_TYPES)  # as many samples as the question-type sets hold
    return (by_style([make_sample("val", i) for i in range(score_n * total)]),
            by_style(eval_samples(eval_n * total, split)))


def domain_check(model, args) -> dict:
    data, tests = domain_sets(args.domains, args.score_n, args.eval_n, args.eval_split)
    base = evaluate(model, tests)
    scores = domain_scores(model, data, towers=args.domain_towers.split(","), lm_tokens=args.domain_tokens,
                           memory_budget=args.memory_budget, progress=False)
    chosen = select_domain_neurons(scores, ratio=args.domain_ratio, quantile=0.95)
    matrix, matrix_p, sizes = {}, {}, {}
    for domain in data:
        part = chosen.where(label=domain)
        sizes[domain] = {tower: len(part.where(tower=tower)) for tower in ("lm", "vision", "projector")}
        if not len(part):
            continue
        result = evaluate(model, tests, part.deactivate(model, args.mode))
        matrix[domain] = {d: round(base[d]["acc"] - result[d]["acc"], 4) for d in tests}
        matrix_p[domain] = {d: round(base[d]["p"] - result[d]["p"], 4) for d in tests}
    wins, wins_p = own_domain_wins(matrix), own_domain_wins(matrix_p)
    return {"kind": args.domains, "ratio": args.domain_ratio, "tokens": args.domain_tokens, "towers": args.domain_towers,
            "base_by_domain": {d: round(v["acc"], 4) for d, v in base.items()},
            "eval_n_by_domain": {d: len(v) for d, v in tests.items()}, "neurons": sizes, "drop_matrix": matrix,
            "own_domain_hurt_most": wins, "domains_passing": sum(wins.values()), "domains_with_neurons": len(matrix),
            "drop_matrix_p": matrix_p, "own_domain_hurt_most_p": wins_p, "domains_passing_p": sum(wins_p.values())}


def own_domain_wins(matrix: dict[str, dict[str, float]]) -> dict[str, bool]:
    """Per switched-off domain: is its own drop larger than the mean drop of the other domains?"""
    return {d: row[d] > float(np.mean([v for e, v in row.items() if e != d])) for d, row in matrix.items()}


def coupled_check(model, tests, base, args) -> dict:
    n = args.score_n
    colour = [make_sample("val", i, "colour") for i in range(n)]
    shape = [make_sample("val", i, "shape") for i in range(n)]
    general = [make_sample("val", i, qt) for i in range(n) for qt in ("exist", "position", "count")][:n]
    chosen = coupled_weights(model, colour, shape, general, p=args.coupled_p, progress=False)
    result = evaluate(model, tests, chosen.zeroed(model))
    return {"weights": len(chosen), "p": args.coupled_p,
            "drop_by_type": {qt: round(base[qt]["acc"] - result[qt]["acc"], 4) for qt in QUESTION_TYPES}}


def bare_forward_seconds(model, samples, batch_size) -> float:
    started = time.perf_counter()
    for chunk in chunks(samples, batch_size):
        with torch.no_grad():
            model.forward(prepare_samples(model, chunk))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--world" in argv:  # the multi-domain world has its own claims and arguments
        k = argv.index("--world")
        world = argv[k + 1] if k + 1 < len(argv) else ""
        rest = argv[:k] + argv[k + 2:]
        if world == "domains":
            from neurons_domains import main as domains_main
            return domains_main(rest)
        if world != "shapes":
            print(f"error: --world is shapes or domains, not {world!r}", file=sys.stderr)
            return 2
        argv = rest
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="zoo name or folder (default: the shipped model)")
    parser.add_argument("--score-n", type=int, default=40, help="val samples per question type to score on")
    parser.add_argument("--eval-n", type=int, default=200, help="samples per question type to evaluate on")
    parser.add_argument("--eval-split", default="test", choices=sorted(EVAL_OFFSET),
                        help="evaluate on test (report) or on val from index 1000 (choose settings)")
    parser.add_argument("--ratio", type=float, default=0.02)
    parser.add_argument("--budget", default="modality", choices=["global", "layer", "modality"])
    parser.add_argument("--score", default="mean+max", help="statistic weights, e.g. mean+max")
    parser.add_argument("--exclusive", action="store_true", help="a neuron competes only for its best modality")
    parser.add_argument("--draws", type=int, default=5, help="random sets to compare against")
    parser.add_argument("--curve", default="0.05,0.1,0.2", help="further ratios: drop per modality vs random")
    parser.add_argument("--mode", default="zero", choices=["zero", "min"])
    parser.add_argument("--domain-ratio", type=float, default=0.01)
    parser.add_argument("--domain-tokens", default="all", choices=["all", "last"])
    parser.add_argument("--domain-towers", default="lm,vision,projector",
                        help="towers to look for domain neurons in (question-type domains differ only in the text)")
    parser.add_argument("--domains", default="question", choices=["question", "style"],
                        help="domains: question types, or image styles (backgrounds)")
    parser.add_argument("--coupled-p", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32, help="Samples per bare forward (the floor).")
    parser.add_argument("--memory-budget", default=None, help="Neuron scoring's memory budget (e.g. 2GB).")
    parser.add_argument("--parts", default="modality,domains,coupled", help="comma-separated checks to run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # shared cores; the model is tiny

    model = mmlens.load(args.model)
    tests = {qt: eval_samples(args.eval_n, args.eval_split, qt) for qt in QUESTION_TYPES}
    data = {qt: [make_sample("val", i, qt) for i in range(args.score_n)] for qt in QUESTION_TYPES}
    base = evaluate(model, tests)
    figures: dict = {"model": model.name, "eval_split": args.eval_split, "eval_n_per_type": args.eval_n, "score_n_per_type": args.score_n,
                     "ratio": args.ratio, "budget": args.budget, "score": args.score, "mode": args.mode,
                     "base_accuracy": round(overall(base), 4),
                     "base_by_type": {qt: round(v["acc"], 4) for qt, v in base.items()}}
    parts = set(args.parts.split(","))
    if "modality" in parts:
        figures["modality"] = modality_check(model, data, tests, base, args)
        flat = [s for items in data.values() for s in items]
        figures["modality"]["bare_forward_seconds"] = round(bare_forward_seconds(model, flat, args.batch_size), 3)
    if "domains" in parts:
        figures["domains"] = domain_check(model, args)
    if "coupled" in parts:
        figures["coupled"] = coupled_check(model, tests, base, args)
    report(figures)
    emit(figures, args.json)
    return 0


def report(figures: dict) -> None:
    print(f"model {figures['model']}: held-out accuracy {figures['base_accuracy']:.3f} "
          f"({figures['eval_n_per_type']} per type) {figures['base_by_type']}")
    if "modality" in figures:
        report_modality(figures)
    if "domains" in figures:
        report_domains(figures["domains"])
    if "coupled" in figures:
        cou = figures["coupled"]
        print(f"\ncoupled weights (colour & shape, not general), p={cou['p']}: {cou['weights']} weights zeroed; "
              f"drop by type {cou['drop_by_type']}")


def report_modality(figures: dict) -> None:
    mod = figures["modality"]
    print(f"\nmodality-specific neurons (top {figures['ratio']:.0%} = {mod['k']} per modality, budget "
          f"{figures['budget']}, score {figures['score']}, mode {figures['mode']}) vs {len(mod['random_drops'])} random sets")
    print(f"{'modality':<9}{'drop':>8}{'random':>8}{'ratio':>7}{'drop p':>9}{'random p':>9}{'ratio p':>8}   depth (L0..)")
    for label, row in mod["per_modality"].items():
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}"
        ratio_p = "-" if row["ratio_p"] is None else f"{row['ratio_p']:.1f}"
        print(f"{label:<9}{row['drop']:>8.3f}{row['random_drop']:>8.3f}{ratio:>7}{row['drop_p']:>9.4f}"
              f"{row['random_drop_p']:>9.4f}{ratio_p:>8}   {mod['depth'][label]}")
    if mod["curve"]:
        print("larger budgets, accuracy drop: " + "; ".join(
            f"{float(r):.0%}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()) for r, row in mod["curve"].items()))
    print(f"global-budget depth: {mod['global_depth']}")
    print(f"scoring {mod['scoring_seconds']:.2f} s vs bare forward {mod['bare_forward_seconds']:.2f} s")


def report_domains(dom: dict) -> None:
    print(f"\ndomain-specific neurons ({dom['kind']} domains, {dom['ratio']:.0%} per tower, {dom['tokens']} tokens), "
          f"neurons per tower: {dom['neurons']}")
    print(f"base accuracy by domain: {dom['base_by_domain']} (held-out samples {dom['eval_n_by_domain']})")
    names = list(dom["base_by_domain"])
    for what, key, passing in (("accuracy", "drop_matrix", "domains_passing"), ("p(answer)", "drop_matrix_p", "domains_passing_p")):
        print(f"{what} drop, rows: domain switched off, columns: domain evaluated")
        print(" " * 10 + "".join(f"{d:>10}" for d in names))
        for domain, row in dom[key].items():
            print(f"{domain:<10}" + "".join(f"{row[d]:>10.4f}" for d in names))
        print(f"own domain hurt most ({what}): {dom[passing]} of {dom['domains_with_neurons']}")


if __name__ == "__main__":
    sys.exit(main())
