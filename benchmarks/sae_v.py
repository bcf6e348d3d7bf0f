"""SAE-V on shapes-llava: does the cross-modal score find misaligned pairs, and does filtering by it help training?

Stages (each writes under ``--out`` and is skipped when its output exists, so
a killed run continues with the same command):

1. ``pool``: ``--pool`` shapes-world train samples (indices from 96,000,000, a
   range no shipped model trained on); ``--misaligned`` (20%) of them get
   another sample's image (a cycle among the chosen ones, so every swapped
   image differs), their question and answer unchanged. Written as
   ``pool/pool.jsonl`` + PNGs (``misaligned`` marks the truth).
2. ``harvest``: shapes-llava over the pool at ``--sites`` into ``store/``.
3. ``sae``: a TopK SAE per site (``mmlens.sae.train``), ``sae-<site>/``.
4. ``score``: SAE-V scores for every (site, ``within``) setting; the pool's
   samples are split in half by a hash of their id (validation / test); the
   setting with the best validation AUROC (aligned = positive) is scored on
   test with a bootstrap 95% interval. ``scores.json``.
5. ``train``: with the chosen setting, three arms on the pool: the top
   ``--keep`` by score, a random ``--keep`` (seeded), everything (and a
   control, ``clean``: a random ``--keep`` of the aligned pairs); each trains
   shapes-llava's projector and decoder from a fresh initialisation (tower
   frozen, as the zoo's stage 2) with the zoo's trainer for the same
   ``--steps``, per seed; held-out test accuracy (``--eval-n`` per question
   type) with a Wilson 95% interval per run, and over seeds a t interval.
   ``train/<arm>-s<seed>-<steps>.json`` per finished run (a rerun skips it).

Example:
    nice -n 10 python benchmarks/sae_v.py --out out/sae-v --stage all --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

POOL_START = 96_000_000
ARMS = ["top", "random", "all", "clean"]  # clean: a control, a random --keep of the aligned pairs only


def make_pool(out: Path, n: int, misaligned: float, seed: int, with_answer: bool = False) -> Path:
    """Write the pool's JSON Lines and images; returns the .jsonl path.

    ``prompt`` is what is harvested: the question, or with ``with_answer`` the
    whole training sequence (question, then answer); ``question`` and
    ``answer`` are what the trainer reads.
    """
    from mmlens.data.shapes import make_sample

    path = out / "pool" / "pool.jsonl"
    if path.exists():
        return path
    (out / "pool" / "images").mkdir(parents=True, exist_ok=True)
    samples = [make_sample("train", POOL_START + i) for i in range(n)]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, int(round(misaligned * n)), replace=False)
    image_of = np.arange(n)
    image_of[chosen] = np.roll(chosen, 1)  # each chosen sample shows the next chosen sample's image
    rows = []
    for i, s in enumerate(samples):
        name = f"images/{i:05d}.png"
        samples[image_of[i]].image.save(out / "pool" / name)
        prompt = f"{s.prompt} {s.answer}" if with_answer else s.prompt  # the answer is one word
        rows.append({"id": f"pool-{i:05d}", "image": name, "prompt": prompt, "question": s.prompt, "answer": s.answer,
                     "type": s.question_type, "misaligned": bool(image_of[i] != i),
                     "image_from": samples[image_of[i]].id})
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def read_pool(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def harvest_pool(model, pool: Path, out: Path, sites: list[str]) -> Path:
    from mmlens.data.readers import open_reader
    from mmlens.store.harvest import harvest

    summary = harvest(model, open_reader(pool), out / "store", sites, shard_size=256, batch_size=16)
    print(f"harvest: {summary['tokens']} tokens, {summary['seconds']} s", flush=True)
    return out / "store"


def train_saes(store: Path, out: Path, sites: list[str], steps: int, k: int, expansion: int) -> dict[str, Path]:
    from mmlens.sae.activations import SiteActivations
    from mmlens.sae.train import TrainConfig, train_sae

    folders = {}
    for site in sites:
        folder = out / f"sae-{site}"
        if not (folder / "training.json").exists() or not (folder / "cfg.json").exists():
            started = time.time()
            train_sae(SiteActivations(store, site), TrainConfig(k=k, expansion=expansion, steps=steps,
                                                                batch_size=2048, checkpoint_every=200), out=folder)
            print(f"sae {site}: {time.time() - started:.0f} s", flush=True)
        folders[site] = folder
    return folders


def auroc_interval(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUROC with a percentile bootstrap 95% interval (samples resampled with replacement)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(labels), len(labels))
        if labels[pick].min() != labels[pick].max():
            boots.append(roc_auc_score(labels[pick], scores[pick]))
    return {"auroc": round(float(roc_auc_score(labels, scores)), 4), "ci95": [round(float(np.percentile(boots, q)), 4)
                                                                           for q in (2.5, 97.5)], "n": int(len(labels))}


def score_pool(store_dir: Path, saes: dict[str, Path], rows: list[dict], out: Path) -> dict:
    from mmlens.sae.crossmodal import WITHIN, SaeVParams, sae_v_scores
    from mmlens.sae.files import load_sae
    from mmlens.sae.labels import split_held_out
    from mmlens.store import Store

    path = out / "scores.json"
    if path.exists():
        return json.loads(path.read_text())
    store = Store.open(store_dir)
    aligned = {r["id"]: not r["misaligned"] for r in rows}
    test_ids = split_held_out(aligned)
    grid, per_sample = [], {}
    for site, folder in saes.items():
        sae = load_sae(folder)
        for within in WITHIN:
            started = time.time()
            s = sae_v_scores(sae, store, site, SaeVParams(within=within))
            ids = np.array(s.sample_ids)
            y = np.array([aligned[i] for i in ids])
            test = np.isin(ids, list(test_ids))
            entry = {"site": site, "within": within, "cross_modal_latents": int(s.cross_modal.sum()),
                     "d_sae": int(sae.d_sae), "seconds": round(time.time() - started, 1),
                     "validation": auroc_interval(y[~test], s.sample_scores[~test]),
                     "test": auroc_interval(y[test], s.sample_scores[test])}
            grid.append(entry)
            per_sample[f"{site}/{within}"] = dict(zip(s.sample_ids, s.sample_scores.tolist()))
            print(json.dumps(entry), flush=True)
    best = max(grid, key=lambda e: e["validation"]["auroc"])
    result = {"grid": grid, "chosen": {"site": best["site"], "within": best["within"]}, "test": best["test"],
              "searched": len(grid), "scores": per_sample[f"{best['site']}/{best['within']}"]}
    path.write_text(json.dumps(result, indent=1))
    return result


def wilson(correct: int, n: int) -> list[float]:
    from mmlens.zoo.evaluate import wilson as interval

    return [round(bound, 4) for bound in interval(correct, n)]


def train_arms(rows: list[dict], pool_dir: Path, scores: dict, out: Path, seeds: list[int], steps: int,
               keep: float, eval_n: int, batch: int, lr: float, arms: list[str] = ARMS) -> list[dict]:
    from PIL import Image

    from mmlens.sae.crossmodal import keep_top
    from mmlens.zoo.evaluate import accuracy
    from mmlens.zoo.shapes_llava import load
    from mmlens.zoo.train.common import init_for_training
    from mmlens.zoo.train.finetune import Example, FinetuneConfig, finetune

    (out / "train").mkdir(parents=True, exist_ok=True)
    examples = {r["id"]: Example(np.asarray(Image.open(pool_dir / r["image"]).convert("RGB")),
                                 [(r.get("question", r["prompt"]), r["answer"])], r["id"]) for r in rows}
    ids = [r["id"] for r in rows]
    top, _ = keep_top(ids, np.array([scores[i] for i in ids]), keep)
    bad = {r["id"] for r in rows if r["misaligned"]}
    for seed in seeds:
        rand = sorted(np.random.default_rng(1000 + seed).choice(ids, len(top), replace=False).tolist())
        aligned = [i for i in ids if i not in bad]
        clean = sorted(np.random.default_rng(2000 + seed).choice(aligned, len(top), replace=False).tolist())
        for arm, chosen in (("top", top), ("random", rand), ("all", ids), ("clean", clean)):
            path = out / "train" / f"{arm}-s{seed}-{steps}.json"  # one file per run: arms may run in parallel
            if arm not in arms or path.exists():
                continue
            torch.manual_seed(seed)
            model, processor = load()
            init_for_training(model.model.multi_modal_projector, model.model.language_model)
            cfg = FinetuneConfig(seed=seed, steps=steps, batch=batch, lr=lr, warmup=min(50, steps // 10), every=50)
            log = finetune(model, processor, [examples[i] for i in chosen], cfg, out / "ft" / f"{arm}-s{seed}-{steps}")
            acc = accuracy(model, processor, n=eval_n, split="test")
            correct = int(round(sum(acc.values()) * eval_n))
            entry = {"arm": arm, "seed": seed, "steps": steps, "examples": len(chosen),
                     "misaligned_share": round(len(bad & set(chosen)) / len(chosen), 4),
                     "accuracy": round(correct / (eval_n * len(acc)), 4), "wilson95": wilson(correct, eval_n * len(acc)),
                     "per_type": acc, "train_seconds": log["seconds"]}
            path.write_text(json.dumps(entry, indent=1))
            print(json.dumps(entry), flush=True)
    return [json.loads(p.read_text()) for p in sorted((out / "train").glob("*.json"))]


def summarise(done: list[dict], steps: int) -> dict:
    """Mean accuracy per arm over seeds, with a t 95% interval when there are several seeds."""
    from scipy import stats

    out = {}
    for arm in ARMS:
        acc = np.array([d["accuracy"] for d in done if d["arm"] == arm and d["steps"] == steps])
        if not len(acc):
            continue
        half = float(stats.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc))) if len(acc) > 1 else None
        out[arm] = {"mean": round(float(acc.mean()), 4), "seeds": len(acc),
                    "ci95": None if half is None else [round(acc.mean() - half, 4), round(acc.mean() + half, 4)]}
    if "top" in out and "all" in out:
        out["top_over_all"] = round(out["top"]["mean"] / out["all"]["mean"], 4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/sae-v"))
    p.add_argument("--stage", choices=["pool", "harvest", "sae", "score", "train", "all"], default="all")
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--misaligned", type=float, default=0.2)
    p.add_argument("--with-answer", action="store_true", help="harvest question and answer (the whole training "
                   "sequence), not the question alone")
    p.add_argument("--sites", default="lm.L1.resid,lm.L2.resid,lm.L3.resid")
    p.add_argument("--sae-steps", type=int, default=600)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=300, help="training steps per arm (matched)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=ARMS, help="arms this process runs (several "
                   "processes may share --out, one arm each)")
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sites = args.sites.split(",")
    order = ["pool", "harvest", "sae", "score", "train"]
    last = order.index(args.stage) if args.stage != "all" else len(order) - 1
    args.out.mkdir(parents=True, exist_ok=True)
    pool = make_pool(args.out, args.pool, args.misaligned, seed=0, with_answer=args.with_answer)
    rows = read_pool(pool)
    if last >= 1:
        import mmlens

        harvest_pool(mmlens.load("shapes-llava"), pool, args.out, sites)
    if last >= 2:
        saes = train_saes(args.out / "store", args.out, sites, args.sae_steps, args.k, args.expansion)
    if last >= 3:
        result = score_pool(args.out / "store", saes, rows, args.out)
        print("chosen", result["chosen"], "test", result["test"], flush=True)
    if last >= 4:
        done = train_arms(rows, pool.parent, result["scores"], args.out, args.seeds, args.steps, args.keep,
                          args.eval_n, args.batch, args.lr, args.arms)
        print(json.dumps(summarise(done, args.steps), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
