"""Vision-tower heads of ``shapes-llava``: which matter for colour and which for shape questions (docs/heads.md).

    nice -n 10 python benchmarks/vision_heads.py --n 64 --out out/bench/vision_heads.json \\
        --figure docs/figures/heads_vision.png

For colour questions and shape questions about the same held-out scenes
(``make_sample("test", i, type)``), over the vision tower's 3 x 4 heads, answer
logit as the metric:

1. knockout grids: each head's output replaced by its mean over the tower's
   tokens (and by zeros), the drop of the answer logit;
2. patching grids, ``clean->corrupt``: the share of the clean-corrupt gap each
   head restores, under pixel noise (3 sd) and under a counterfactual image
   with the asked object removed; beside each, the attribution-patching
   estimate, its Spearman against the exhaustive grid (95% bootstrap interval
   over samples) and the wall-time ratio;
3. position-restricted knockout (mean): each head ablated only at the asked
   object's tower patches (those overlapping its bounding box), only at the
   other patches, or only at CLS.

Then the Spearman of the colour and shape knockout grids, and two figures
(rows: question types): the whole-head grids (knockout, patching under noise
and under removal) and ``<figure>_positions.png``, the knockout at the object,
at the other patches and at CLS. ``--replot`` redraws them from the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402
from heads import compare, top  # noqa: E402

TYPES = ("colour", "shape")


def prepared(model, samples: list, size: int, counterfactual: str | None = None) -> list:
    """Batches of ``samples`` (or of their counterfactuals)."""
    from mmlens.data.shapes import counterfactual as make_counterfactual

    chosen = [make_counterfactual(s, counterfactual) for s in samples] if counterfactual else samples
    return [model.prepare([s.prompt for s in chosen[i:i + size]], [[s.image] for s in chosen[i:i + size]])
            for i in range(0, len(chosen), size)]


def object_masks(model, batch, samples: list) -> dict[str, torch.Tensor]:
    """Per row, the tower tokens of the asked object's bounding box, the other patches, and CLS."""
    from mmlens.box import Box
    from mmlens.causal.head_positions import head_mask, vision_shape

    shape = vision_shape(model, batch)
    patches = head_mask(model, batch, "patches", "vision", shape)
    obj = torch.zeros(shape, dtype=torch.bool)
    for row, sample in enumerate(samples):
        ys, xs = np.nonzero(sample.target_mask())
        box = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        obj[row] = head_mask(model, batch, box, "vision", shape)[row]
    return {"object": obj, "other patches": patches & ~obj, "CLS": ~patches}


def knockout(model, batches: list, ablation: str, masks: list | None = None, tower: str = "vision") -> np.ndarray:
    """The pooled knockout grid (answer-logit drop) over all batches; ``masks``: each batch's positions."""
    from mmlens.causal.heads import knockout_heads

    grids = [knockout_heads(model, b, ablation=ablation, metric="logit", tower=tower,
                            positions=None if masks is None else masks[i]) for i, b in enumerate(batches)]
    clean = np.concatenate([g.clean.numpy() for g in grids])
    edited = np.concatenate([g.edited.numpy() for g in grids])
    return (clean[:, None, None] - edited).mean(0)


def patching(model, batches: list, corrupt: list, draws: int) -> dict:
    """Exhaustive and attribution-patching grids (clean->corrupt, logit), their Spearman and times."""
    return compare(model, list(zip(batches, corrupt)), "clean->corrupt", "logit", draws, tower="vision")


def figure(results: dict, path: Path, columns: list[tuple[str, str]]) -> None:
    """Rows: question types; one column per ``(key, title)`` of ``columns``. Values written in every cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TYPES), len(columns), figsize=(3.9 * len(columns), 5.8), dpi=110)
    for r, kind in enumerate(TYPES):
        for c, (key, title) in enumerate(columns):
            value = results[kind]
            for part in key.split("/"):
                value = value[part]
            grid = np.asarray(value["grid_exhaustive"] if isinstance(value, dict) else value)
            limit = max(float(np.abs(grid).max()), 1e-6)
            ax = axes[r, c]
            image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit)
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.6 * limit else "black")
            ax.set_xticks(range(grid.shape[1]), [f"H{j}" for j in range(grid.shape[1])])
            ax.set_yticks(range(grid.shape[0]), [f"vision L{i}" for i in range(grid.shape[0])])
            ax.set_title(f"{kind} questions\n{title}", fontsize=9)
            fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


#: The two figures: whole heads, and heads knocked out at chosen positions only.
GRIDS = [("knockout_mean", "knockout (mean): logit drop"), ("noise", "patching, pixel noise: share"),
         ("remove", "patching, object removed: share")]
PLACES = [("knockout_mean_at/object", "knockout (mean) at the object"),
          ("knockout_mean_at/other patches", "... at the other patches"), ("knockout_mean_at/CLS", "... at CLS")]


def figures(results: dict, path: Path) -> None:
    """``path`` (whole heads) and ``<stem>_positions.png`` beside it."""
    figure(results, path, GRIDS)
    figure(results, path.with_name(f"{path.stem}_positions{path.suffix}"), PLACES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava")
    parser.add_argument("--n", type=int, default=64, help="held-out samples per question type")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out/bench/vision_heads.json"))
    parser.add_argument("--figure", type=Path, default=None, help="write the grids' figure here")
    parser.add_argument("--replot", action="store_true", help="only redraw the figures from --out's JSON")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.replot:
        figures(json.loads(args.out.read_text()), args.figure)
        return

    import mmlens
    from mmlens.data.shapes import make_sample

    model = mmlens.load(args.model)
    results: dict = {"model": args.model, "n": args.n, "batch": args.batch, "threads": args.threads}
    for kind in TYPES:
        samples = [make_sample("test", i, kind) for i in range(args.n)]
        batches = prepared(model, samples, args.batch)
        parts = [samples[i:i + args.batch] for i in range(0, len(samples), args.batch)]
        row: dict = {"knockout_mean": knockout(model, batches, "mean").round(4).tolist(),
                     "knockout_zero": knockout(model, batches, "zero").round(4).tolist()}
        row["noise"] = patching(model, batches, ["noise"] * len(batches), args.draws)
        row["remove"] = patching(model, batches, prepared(model, samples, args.batch, "remove"), args.draws)
        masks = [object_masks(model, b, p) for b, p in zip(batches, parts)]
        row["knockout_mean_at"] = {where: knockout(model, batches, "mean", [m[where] for m in masks]).round(4).tolist()
                                   for where in masks[0]}
        results[kind] = row
        print(f"{kind}: knockout (mean) top {top(np.asarray(row['knockout_mean']))}", flush=True)
        for key in ("noise", "remove"):
            p = row[key]
            print(f"  {key:6s} gap {p['gap']:+.2f} top {p['top_exhaustive']} attribution Spearman {p['spearman']:.3f} "
                  f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] speed x{p['speed_ratio']}", flush=True)
        for where, grid in row["knockout_mean_at"].items():
            print(f"  knockout (mean) at {where}: top {top(np.asarray(grid))}", flush=True)
    a, b = (np.asarray(results[k]["knockout_mean"]).ravel() for k in TYPES)
    results["colour_vs_shape_knockout_spearman"] = float(spearmanr(a, b).statistic)
    print(f"Spearman of the colour and shape knockout grids: {results['colour_vs_shape_knockout_spearman']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    if args.figure is not None:
        figures(results, args.figure)
    emit(results, args.json)


if __name__ == "__main__":
    main()
