"""PRISM data selection on a redundant pool: train on PRISM's 30%, a random 30% and everything, at matched steps.

Stages (each resumable: a finished run's JSON in ``--out`` is not redone, a
killed training run resumes from its ``resume.pt`` under ``--work``):

1. ``score``: PRISM redundancy of every pool row with ``shapes-llava``
   (``mmlens.audit.prism``), timed; the kept ids go to ``OUT/scoring.json``.
2. ``train``: for each arm (``prism``, ``random``, ``full``) and seed, the
   zoo's trainer (``mmlens.zoo.train.finetune``) on that subset, from the
   stage-1 tower: ``shapes-llava``'s frozen vision tower with projector and
   decoder re-initialised as stage 2 does (``init_for_training``; ``lm_head``
   at std 0.02 as a fresh model), the same steps, batch and schedule for every
   arm; then accuracy on ``--eval-n`` held-out test questions per type,
   written per question to ``OUT/run-<arm>-<seed>.json``.
3. ``report``: accuracy per arm with a bootstrap 95% interval over test
   questions (the seeds' mean per question), paired differences, training
   and scoring times.

Several ``train`` processes may run at once on different ``--runs``.

Example:
    nice -n 10 python benchmarks/prism.py --stage all --seeds 0 1 2 --out out/bench/prism
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ARMS = ("prism", "random", "full")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=("score", "train", "report", "all"), default="all")
    p.add_argument("--bases", type=int, default=200, help="repeated scenes")
    p.add_argument("--copies", type=int, default=10, help="copies of each repeated scene")
    p.add_argument("--unique", type=int, default=400, help="scenes seen once")
    p.add_argument("--keep", type=float, default=0.3)
    p.add_argument("--layer", type=int, default=None, help="scoring layer (default: a quarter up the decoder)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", nargs="*", default=None, help="arm:seed pairs to train (default: every arm x seed)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-n", type=int, default=200, help="held-out test questions per type")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("out/bench/prism"))
    p.add_argument("--work", type=Path, default=None, help="checkpoints (default: OUT/work)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    return p.parse_args(argv)


def pool_rows(a: argparse.Namespace) -> list:
    from mmlens.audit.redundant_pool import PoolLayout

    layout = PoolLayout(bases=a.bases, copies=a.copies, unique=a.unique)
    return [layout.sample(k) for k in range(layout.size)]


def score(a: argparse.Namespace, rows: list) -> dict:
    """PRISM on the pool, timed from model load to the kept ids; diagnostics against the pool's known copies."""
    import mmlens
    from mmlens.audit.prism import pooled_image_states, prism_select

    t0 = time.perf_counter()
    model = mmlens.load("shapes-llava")
    table = pooled_image_states(model, rows, layer=a.layer)
    result = prism_select(table, keep=a.keep)
    seconds = time.perf_counter() - t0
    bases = np.array([-1 if r.meta["base"] is None else r.meta["base"] for r in rows])
    unique = bases < 0
    kept = set(result.kept)
    chosen = np.array([r.id in kept for r in rows])
    ranks = np.argsort(np.argsort(result.scores))  # AUROC of redundancy: copies above unique scenes
    auroc = (ranks[~unique].mean() - (np.sum(~unique) - 1) / 2) / np.sum(unique) if unique.any() else float("nan")
    return {"seconds": round(seconds, 1), "layer": table.layer, "n": len(rows), "kept": result.kept,
            "summary": result.summary(), "auroc_copies_over_unique": float(auroc),
            "kept_unique": int((chosen & unique).sum()), "kept_distinct_scenes": _distinct(bases, chosen),
            "scores": [round(float(s), 6) for s in result.scores]}


def _distinct(bases: np.ndarray, chosen: np.ndarray) -> int:
    """Distinct scenes in a subset: each unique row, plus each repeated scene with a copy in it."""
    picked = bases[chosen]
    return int((picked < 0).sum() + len(set(picked[picked >= 0].tolist())))


def subset(arm: str, seed: int, rows: list, scoring: dict, keep: float) -> list:
    if arm == "full":
        return rows
    if arm == "prism":
        kept = set(scoring["kept"])
        return [r for r in rows if r.id in kept]
    n = round(keep * len(rows))
    pick = np.sort(np.random.default_rng([seed, 30]).permutation(len(rows))[:n])
    return [rows[i] for i in pick]


def fresh_model(seed: int):
    """``shapes-llava`` with projector and decoder re-initialised: stage 2's start, on the stage-1 tower."""
    from mmlens.zoo.shapes_llava import load
    from mmlens.zoo.train.common import init_for_training

    model, processor = load()
    torch.manual_seed(seed)
    init_for_training(model.model.multi_modal_projector, model.model.language_model)
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # a fresh LLaMA head
    return model, processor


def heldout_correct(model, processor, n: int) -> dict[str, list[int]]:
    """Per held-out test question, 1 when the answer is right (first ``n`` of each type)."""
    from mmlens.data.shapes import QUESTION_TYPES
    from mmlens.zoo.evaluate import answer_probs, heldout

    tok, out = processor.tokenizer, {}
    model.eval()
    with torch.no_grad():
        for qt in QUESTION_TYPES:
            samples = heldout(qt, n, "test")
            words = tok.convert_ids_to_tokens(answer_probs(model, processor, samples).argmax(-1).tolist())
            out[qt] = [int(w == s.answer) for w, s in zip(words, samples)]
    return out


def train_run(a: argparse.Namespace, arm: str, seed: int, rows: list, scoring: dict) -> dict:
    from mmlens.zoo.train.finetune import FinetuneConfig, finetune

    data = subset(arm, seed, rows, scoring, a.keep)
    model, processor = fresh_model(seed)
    cfg = FinetuneConfig(seed=seed, steps=a.steps, batch=a.batch, lr=a.lr, every=50)
    t0 = time.perf_counter()
    log = finetune(model, processor, data, cfg, (a.work or a.out / "work") / f"{arm}-{seed}")
    seconds = time.perf_counter() - t0
    bases = np.array([-1 if r.meta["base"] is None else r.meta["base"] for r in data])
    correct = heldout_correct(model, processor, a.eval_n)
    flat = [c for v in correct.values() for c in v]
    return {"arm": arm, "seed": seed, "n_train": len(data), "distinct_scenes": _distinct(bases, bases == bases),
            "train_seconds": round(seconds, 1), "resumed_at": log["start_step"], "config": log["config"],
            "accuracy": float(np.mean(flat)), "per_type": {k: float(np.mean(v)) for k, v in correct.items()},
            "correct": correct}


def report(a: argparse.Namespace) -> dict:
    from mmlens.metrics.sanity import bootstrap_mean

    scoring = json.loads((a.out / "scoring.json").read_text())
    runs = {arm: [json.loads(p.read_text()) for p in sorted(a.out.glob(f"run-{arm}-*.json"))] for arm in ARMS}
    per_item, out = {}, {"scoring_seconds": scoring["seconds"], "scoring_auroc": scoring["auroc_copies_over_unique"],
                         "prism_kept_unique": scoring["kept_unique"], "arms": {}}
    for arm, rs in runs.items():
        if not rs:
            continue
        items = np.array([[c for v in r["correct"].values() for c in v] for r in rs], float)
        per_item[arm] = items.mean(0)  # the seeds' mean per test question
        mean, low, high = bootstrap_mean(per_item[arm])
        out["arms"][arm] = {"seeds": [r["seed"] for r in rs], "accuracy": mean, "ci95": [low, high],
                            "per_seed": [r["accuracy"] for r in rs],
                            "per_type": {k: float(np.mean([r["per_type"][k] for r in rs])) for k in rs[0]["per_type"]},
                            "n_train": rs[0]["n_train"], "distinct_scenes": [r["distinct_scenes"] for r in rs],
                            "train_seconds": float(np.mean([r["train_seconds"] for r in rs]))}
    for x, y in (("prism", "random"), ("full", "random"), ("prism", "full")):
        if x in per_item and y in per_item:
            mean, low, high = bootstrap_mean(per_item[x] - per_item[y])
            out[f"{x}_minus_{y}"] = {"points": 100 * mean, "ci95": [100 * low, 100 * high]}
    if "full" in out["arms"]:
        out["scoring_over_full_training"] = scoring["seconds"] / out["arms"]["full"]["train_seconds"]
    return out


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = pool_rows(a) if a.stage != "report" else []
    score_path = a.out / "scoring.json"
    if a.stage in ("score", "all") and not score_path.exists():
        scoring = score(a, rows)
        score_path.write_text(json.dumps(scoring))
        print(f"scored {scoring['n']} in {scoring['seconds']} s; AUROC copies > unique "
              f"{scoring['auroc_copies_over_unique']:.3f}; kept {scoring['kept_unique']} unique, "
              f"{scoring['kept_distinct_scenes']} distinct scenes", flush=True)
    if a.stage in ("train", "all"):
        runs = [r.split(":") for r in a.runs] if a.runs else [(arm, s) for s in a.seeds for arm in ARMS]
        for arm, seed in runs:
            path = a.out / f"run-{arm}-{seed}.json"
            if path.exists():
                continue
            if arm == "prism" and not score_path.exists():
                raise SystemExit(f"{score_path} is missing: run --stage score first")
            # read per run: a process started before the scoring finished sees it once it is there
            scoring = json.loads(score_path.read_text()) if arm == "prism" else {}
            result = train_run(a, arm, int(seed), rows, scoring)
            path.write_text(json.dumps(result))
            print(f"{arm} seed {seed}: accuracy {result['accuracy']:.3f} {result['per_type']} "
                  f"in {result['train_seconds']} s", flush=True)
    if a.stage in ("report", "all"):
        figures = report(a)
        print(json.dumps(figures) if a.json else json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
