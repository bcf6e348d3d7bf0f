"""Model-randomisation sanity checks (Adebayo et al., 2018) of every attribution method on shapes-llava.

    python benchmarks/sanity.py [--n 50] [--methods attention,rollout] [--figure docs/figures/sanity_checks.png] [--json]

The decoder layers are re-initialised (the zoo's training init, see
:mod:`mmlens.metrics.sanity`) in cascade from the top (layer 3, then 3+2, ...
then all four) and, separately, one layer at a time. For each method and each
randomised model, the Spearman correlation between its 8 x 8 image-token
heatmap and the trained model's is computed per held-out sample (``--n`` test
samples, the question types in turn), and averaged with a bootstrap 95%
interval; both the signed scores and their magnitudes (``abs``) are compared.
Every model explains the same teacher-forced ground-truth answer. The check
passes when, with every decoder layer random, the interval's upper bound is
under 0.3. The randomised models' accuracy on the same samples is reported
too (does randomisation break the model?). With --json the last line is every
figure as one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.attribution.api import METHODS  # noqa: E402
from mmlens.data.shapes import QUESTION_TYPES, make_sample  # noqa: E402
from mmlens.metrics.sanity import (  # noqa: E402
    bootstrap_mean, cascade, image_grids, independent, randomised, spearman_rows,
)
from mmlens.readout import Targets, build_targets  # noqa: E402

BAR = 0.3  # the bar: Spearman at most 0.3 once every decoder layer is random
ERR = Console(stderr=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava")
    parser.add_argument("--n", type=int, default=50, help="held-out test samples (question types in turn)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=0, help="randomisation seed (layer k uses seed + k)")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps")
    parser.add_argument("--rise-masks", type=int, default=128)
    parser.add_argument("--figure", default=None, help="write the curves as a PNG here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    options = {"integrated_gradients": {"steps": args.ig_steps}, "rise": {"masks": args.rise_masks}}

    model = mmlens.load(args.model)
    samples = [make_sample("test", i, QUESTION_TYPES[i % len(QUESTION_TYPES)]) for i in range(args.n)]
    chunks = [samples[s : s + args.batch] for s in range(0, len(samples), args.batch)]
    n = model.n_layers
    arms = {"cascade": list(cascade(n)), "independent": list(independent(n))}
    variants = sorted({v for steps in arms.values() for v in steps}, key=lambda v: (len(v), v))
    began = time.perf_counter()
    trained, accuracy = _heatmaps(model, chunks, methods, options, "trained")
    maps, accuracies = {}, {"trained": accuracy}
    for layers in variants:
        random = randomised(model, layers, seed=args.seed)
        maps[layers], accuracies[_key(layers)] = _heatmaps(random, chunks, methods, options, _key(layers))
        del random
    figures = {}
    for method in methods:
        figures[method] = {}
        for arm, steps in arms.items():
            figures[method][arm] = [_compare(trained[method], maps[layers][method], layers) for layers in steps]
    report = {
        "model": model.name, "n": len(samples), "seed": args.seed, "bar": BAR, "options": options,
        "accuracy": accuracies, "seconds": round(time.perf_counter() - began, 1), "methods": figures,
        "passes": {m: figures[m]["cascade"][-1]["upper"] < BAR for m in methods},
        "passes_abs": {m: figures[m]["cascade"][-1]["abs_upper"] < BAR for m in methods},
    }
    _print(report, arms)
    if args.figure:
        _figure(report, arms, Path(args.figure))
        ERR.print(f"figure: {args.figure}")
    emit(report, args.json)


def _key(layers: tuple[int, ...]) -> str:
    return "+".join(str(k) for k in layers)


def _targets(model: mmlens.Model, chunk: list) -> Targets:
    batch = model.prepare([s.prompt for s in chunk], [[s.image] for s in chunk])
    return build_targets(model, batch, answer=[s.answer for s in chunk])


def _heatmaps(model: mmlens.Model, chunks: list, methods: list[str], options: dict,
              label: str) -> tuple[dict[str, np.ndarray], float]:
    """Each method's (samples, 64) image grids for the ground-truth answer, and the model's accuracy."""
    grids: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    right = total = 0
    for c, chunk in enumerate(chunks):
        targets = _targets(model, chunk)
        with torch.no_grad():
            logits = model.forward(targets.batch, use_cache=False).logits[:, -1]
        answers = model.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
        right += sum(a == s.answer for a, s in zip(answers, chunk))
        total += len(chunk)
        for method in methods:
            start = time.perf_counter()
            scores = METHODS[method](model, targets, **options.get(method, {})).scores[:, 0]
            grids[method].append(image_grids(scores, targets.batch.layout))
            ERR.print(f"[{label}] chunk {c + 1}/{len(chunks)} {method} {time.perf_counter() - start:.1f} s")
    return {m: np.concatenate(g) for m, g in grids.items()}, right / total


def _compare(trained: np.ndarray, random: np.ndarray, layers: tuple[int, ...]) -> dict:
    rho, rho_abs = spearman_rows(trained, random), spearman_rows(trained, random, absolute=True)
    mean, low, high = bootstrap_mean(rho)
    abs_mean, abs_low, abs_high = bootstrap_mean(rho_abs)
    return {"layers": _key(layers), "mean": round(mean, 4), "lower": round(low, 4), "upper": round(high, 4),
            "abs_mean": round(abs_mean, 4), "abs_lower": round(abs_low, 4), "abs_upper": round(abs_high, 4),
            "undefined": int(np.isnan(rho).sum())}


def _print(report: dict, arms: dict) -> None:
    """Markdown tables (they read in a terminal and paste into docs): signed, then magnitudes."""
    acc = report["accuracy"]
    print(f"{report['model']}, {report['n']} test samples, accuracy on them: "
          + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    for arm, steps in arms.items():
        for prefix, title in (("", "signed scores"), ("abs_", "magnitudes")):
            print(f"\n{arm}, {title}: Spearman with the trained heatmap, mean [95% CI]\n")
            head = ["method", *(f"random {_key(v)}" for v in steps)]
            if arm == "cascade":
                head.append(f"upper < {BAR}?")
            print("| " + " | ".join(head) + " |")
            print("|" + "---|" * len(head))
            for method, figures in report["methods"].items():
                cells = [f"{f[prefix + 'mean']:.2f} [{f[prefix + 'lower']:.2f}, {f[prefix + 'upper']:.2f}]"
                         for f in figures[arm]]
                if arm == "cascade":
                    cells.append("pass" if report["passes" + ("_abs" if prefix else "")][method] else "**fail**")
                print("| " + " | ".join([method, *cells]) + " |")
    print(f"\n{report['seconds']:.0f} s")


def _figure(report: dict, arms: dict, path: Path) -> None:
    """One panel per arm, one line per method, the 95% interval shaded, the bar dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (arm, steps) in zip(axes, arms.items()):
        x = np.arange(len(steps) + 1)
        for i, (method, figures) in enumerate(report["methods"].items()):
            rows = figures[arm]
            mean = [1.0] + [f["mean"] for f in rows]
            low = [1.0] + [f["lower"] for f in rows]
            high = [1.0] + [f["upper"] for f in rows]
            (line,) = ax.plot(x, mean, "-" if i < 10 else "--", marker="o", ms=3, label=method)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
        ax.axhline(BAR, color="k", ls=":", lw=1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(x, ["trained"] + [f"random {_key(v)}" for v in steps], rotation=20, fontsize=8)
        ax.set_title(f"{arm} randomisation of the decoder")
        ax.set_ylim(-0.3, 1.05)
    axes[0].set_ylabel("Spearman with trained heatmap (signed)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle(f"Sanity checks, {report['model']}, {report['n']} test samples, 95% bootstrap intervals")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
