"""Attribution patching against exhaustive head patching on ``shapes-llava`` (docs/heads.md has the figures).

    nice -n 10 python benchmarks/heads.py --n 64 --out out/bench/heads.json

For each corruption (pixel noise and image-embedding noise on four question
types; a recoloured counterfactual image on colour questions), each direction
(``clean->corrupt``, ``corrupt->clean``) and each metric (answer probability,
answer logit):

1. the exhaustive layer x head patching grid (:func:`mmlens.causal.heads.patch_heads`)
   and the attribution-patching estimate (:func:`mmlens.causal.attribution_patching.attribution_patching`)
   over the same held-out samples, in batches;
2. the Spearman correlation of the two pooled grids, with a bootstrap 95%
   interval over samples (both grids recomputed from the resampled rows);
3. the wall time of each method summed over the batches, and their ratio.

Then the median time of one batch of each method (interleaved repeats) for the
headline setting, and the top heads of the knockout grid for the record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, median_seconds  # noqa: E402

TYPES = ("colour", "shape", "exist", "position")
DIRECTIONS = ("clean->corrupt", "corrupt->clean")
METRICS = ("probability", "logit")


def pooled_effect(clean: np.ndarray, corrupt: np.ndarray, edited: np.ndarray, direction: str) -> np.ndarray:
    """The pooled patching share per cell over the given rows (as :class:`HeadGrid.effect` computes it)."""
    gap = (clean - corrupt).mean()
    if direction == "clean->corrupt":
        return (edited - corrupt[:, None, None]).mean(0) / gap
    return (clean[:, None, None] - edited).mean(0) / gap


def bootstrap_spearman(exhaustive: dict, estimate: dict, direction: str, draws: int, seed: int = 0) -> tuple:
    """95% percentile interval of the pooled-grid Spearman over resampled samples."""
    rng = np.random.default_rng(seed)
    rows = len(exhaustive["clean"])
    values = []
    for _ in range(draws):
        pick = rng.integers(0, rows, rows)
        a = pooled_effect(*(exhaustive[k][pick] for k in ("clean", "corrupt", "edited")), direction)
        b = pooled_effect(*(estimate[k][pick] for k in ("clean", "corrupt", "edited")), direction)
        values.append(spearmanr(a.ravel(), b.ravel()).statistic)
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def batches(model, samples: list, corruption: str, size: int) -> list[tuple]:
    """``(clean batch, corruption)`` pairs; the recolour corruption is a prepared counterfactual batch."""
    from mmlens.data.shapes import counterfactual

    out = []
    for first in range(0, len(samples), size):
        part = samples[first:first + size]
        batch = model.prepare([s.prompt for s in part], [[s.image] for s in part])
        if corruption == "recolour":
            other = [counterfactual(s, "recolour") for s in part]
            out.append((batch, model.prepare([s.prompt for s in other], [[s.image] for s in other])))
        else:
            out.append((batch, corruption))
    return out


def compare(model, pairs: list[tuple], direction: str, metric: str, draws: int, **options) -> dict:
    """Both grids over ``pairs``, their Spearman (bootstrap interval) and times; ``options`` go to both methods."""
    from mmlens.causal.attribution_patching import attribution_patching
    from mmlens.causal.heads import patch_heads

    parts: dict[str, dict[str, list]] = {"exhaustive": {}, "attribution": {}}
    seconds = {"exhaustive": 0.0, "attribution": 0.0}
    for batch, corrupt in pairs:
        for name, method in (("exhaustive", patch_heads), ("attribution", attribution_patching)):
            start = time.perf_counter()
            grid = method(model, batch, direction=direction, corrupt=corrupt, metric=metric, **options)
            seconds[name] += time.perf_counter() - start
            for key in ("clean", "corrupt", "edited"):
                parts[name].setdefault(key, []).append(getattr(grid, key).numpy())
    joined = {name: {k: np.concatenate(v) for k, v in values.items()} for name, values in parts.items()}
    grids = {name: pooled_effect(*(j[k] for k in ("clean", "corrupt", "edited")), direction)
             for name, j in joined.items()}
    rho = float(spearmanr(grids["exhaustive"].ravel(), grids["attribution"].ravel()).statistic)
    low, high = bootstrap_spearman(joined["exhaustive"], joined["attribution"], direction, draws)
    ex = joined["exhaustive"]
    return {"direction": direction, "metric": metric, "samples": int(len(ex["clean"])),
            "gap": float((ex["clean"] - ex["corrupt"]).mean()), "spearman": rho, "ci95": [low, high],
            "seconds_exhaustive": round(seconds["exhaustive"], 3),
            "seconds_attribution": round(seconds["attribution"], 3),
            "speed_ratio": round(seconds["exhaustive"] / seconds["attribution"], 2),
            "top_exhaustive": top(grids["exhaustive"]), "top_attribution": top(grids["attribution"]),
            "grid_exhaustive": grids["exhaustive"].round(4).tolist(),
            "grid_attribution": grids["attribution"].round(4).tolist()}


def top(grid: np.ndarray, k: int = 3) -> list[str]:
    order = np.argsort(-grid.ravel())[:k]
    return [f"L{i // grid.shape[1]}.H{i % grid.shape[1]} {grid.ravel()[i]:+.3f}" for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava")
    parser.add_argument("--n", type=int, default=64, help="held-out samples per corruption")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats of one batch (headline setting)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out/bench/heads.json"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mmlens
    from mmlens.causal.attribution_patching import attribution_patching
    from mmlens.causal.heads import knockout_heads, patch_heads
    from mmlens.data.shapes import make_sample

    model = mmlens.load(args.model)
    mixed = [make_sample("test", i, TYPES[i % len(TYPES)]) for i in range(args.n)]
    colour = [make_sample("test", 1000 + i, "colour") for i in range(args.n)]
    settings = []
    for corruption, samples in (("noise", mixed), ("embeddings", mixed), ("recolour", colour)):
        pairs = batches(model, samples, corruption, args.batch)
        for direction in DIRECTIONS:
            for metric in METRICS:
                row = {"corruption": corruption, **compare(model, pairs, direction, metric, args.draws)}
                settings.append(row)
                print(f"{corruption:10s} {direction:15s} {metric:11s} gap {row['gap']:+.3f} Spearman "
                      f"{row['spearman']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] "
                      f"speed x{row['speed_ratio']}", flush=True)
    batch, _ = batches(model, mixed[:args.batch], "noise", args.batch)[0]
    timing = median_seconds({
        "exhaustive": lambda: patch_heads(model, batch, corrupt="embeddings", metric="logit"),
        "attribution": lambda: attribution_patching(model, batch, corrupt="embeddings", metric="logit")},
        args.repeats, warmup=1)
    knock = knockout_heads(model, batch, metric="logit")
    figures = {"model": args.model, "n": args.n, "batch": args.batch, "threads": args.threads,
               "settings": settings,
               "median_batch_seconds": {k: round(v, 4) for k, v in timing.items()},
               "median_speed_ratio": round(timing["exhaustive"] / timing["attribution"], 2),
               "knockout_top_logit_drop": [f"L{l}.H{h} {v:+.3f}" for l, h, v in knock.top(3)]}
    print(f"median of {args.repeats} (one batch of {args.batch}, embeddings, logit): exhaustive "
          f"{timing['exhaustive']:.3f}s, attribution {timing['attribution']:.3f}s, x{figures['median_speed_ratio']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    emit(figures, args.json)


if __name__ == "__main__":
    main()
