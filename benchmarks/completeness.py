"""Integrated-gradients completeness on the shipped model, by number of steps and quadrature rule.

    python benchmarks/completeness.py [--samples 32] [--steps 32,64,128,256] [--json]

Relative error |sum(attributions) - (f(x) - f(x0))| / |f(x) - f(x0)| per
held-out sample (colour and shape questions, ground truth teacher-forced).
With --json the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.attribution.gradients import integrated_gradients  # noqa: E402
from mmlens.readout import build_targets  # noqa: E402
from mmlens.data.shapes import make_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", default="32,64,128,256")
    parser.add_argument("--rules", default="gausslegendre,riemann_middle,adaptive")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = mmlens.load(args.model)
    samples = [make_sample("test", i, ("colour", "shape")[i % 2]) for i in range(args.samples)]
    batch = model.prepare([s.prompt for s in samples], [[s.image] for s in samples])
    targets = build_targets(model, batch, answer=[s.answer for s in samples])
    table = Table("steps", "rule", "mean", "median", "max", title=f"IG completeness error, {model.name}")
    figures = []
    for steps in map(int, args.steps.split(",")):
        for rule in args.rules.split(","):
            errors = integrated_gradients(model, targets, steps=steps, rule=rule).extras["completeness_error"][:, 0]
            row = {"steps": steps, "rule": rule, "mean": float(errors.mean()), "median": float(errors.median()),
                   "max": float(errors.max())}
            figures.append(row)
            table.add_row(str(steps), rule, *(f"{row[k]:.4f}" for k in ("mean", "median", "max")))
    Console().print(table)
    emit({"model": model.name, "samples": len(samples), "errors": figures}, args.json)


if __name__ == "__main__":
    main()
