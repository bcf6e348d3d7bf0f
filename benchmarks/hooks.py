"""Capture overhead: a bare forward against one capturing every residual site, and nnsight doing the same.

    python benchmarks/hooks.py [--model NAME] [--batch 8] [--repeats 30] [--json]

Prints one table; with --json the last line is a JSON object of its figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median_seconds, no_grad  # noqa: E402

import mmlens  # noqa: E402
from mmlens.cli.samples import drawn_example  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="zoo name or path (default: the shipped model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings steady)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = mmlens.load(args.model)
    image = drawn_example((64, 64))
    batch = model.prepare(["<image> what colour is the circle ?"] * args.batch, [[image]] * args.batch)
    sites = mmlens.hooks.expand(model, "lm.L*.resid")

    def bare() -> object:
        return model.forward(batch)

    def ours() -> object:
        with mmlens.capture(model, sites) as captured:
            model.forward(batch)
        return captured

    runs = {"bare forward": no_grad(bare), "mmlens capture": no_grad(ours)}
    nnsight_runner = _nnsight_runner(model, batch)
    if nnsight_runner is not None:
        runs["nnsight capture"] = no_grad(nnsight_runner)
        # Same work, same answers: both must have captured identical residual streams.
        theirs, ours_captured = runs["nnsight capture"](), runs["mmlens capture"]()
        for site, value in zip(sites, theirs):
            value = value[0] if isinstance(value, tuple) else value
            torch.testing.assert_close(value, ours_captured[site])
    seconds = median_seconds(runs, repeats=args.repeats)

    base = seconds["bare forward"]
    table = Table(title=f"capture every residual site ({len(sites)} sites), {model.name}, batch {args.batch}")
    table.add_column("run")
    table.add_column("ms", justify="right")
    table.add_column("x bare forward", justify="right")
    for name, value in seconds.items():
        table.add_row(name, f"{value * 1e3:.2f}", f"{value / base:.3f}")
    Console().print(table)
    figures = {
        "model": model.name,
        "batch": args.batch,
        "sites": len(sites),
        "ms": {name: round(value * 1e3, 3) for name, value in seconds.items()},
        "mmlens_overhead": round(seconds["mmlens capture"] / base - 1, 4),
    }
    if "nnsight capture" in seconds:
        figures["nnsight_overhead"] = round(seconds["nnsight capture"] / base - 1, 4)
        figures["nnsight_over_mmlens"] = round(seconds["nnsight capture"] / seconds["mmlens capture"], 3)
    emit(figures, args.json)


def _nnsight_runner(model: mmlens.Model, batch: mmlens.Batch):
    """nnsight saving the same residual outputs, or None when the bench extra is not installed."""
    try:
        from nnsight import NNsight
    except ImportError:
        print("nnsight is not installed (pip install -e .[bench]); skipping it")
        return None
    wrapped = NNsight(model.hf)
    layers_path = model.adapter.decoder_layers.split("|")[0]
    inputs = dict(batch.inputs)
    inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)

    layers = wrapped
    for part in layers_path.split("."):
        layers = getattr(layers, part)

    def run() -> list:
        saved: list = []
        with wrapped.trace(**inputs):
            for layer in layers:
                saved.append(layer.output.save())
        return saved

    return run


if __name__ == "__main__":
    main()
