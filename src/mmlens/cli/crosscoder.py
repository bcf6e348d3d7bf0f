"""``mmlens crosscoder``: train a BatchTopK crosscoder on two models' stores, and read what it says.

``train`` reads one site of two stores harvested over the same samples (model
A, e.g. the base; model B, e.g. a fine-tune) and writes ``crosscoder.json``,
``crosscoder.safetensors`` and ``training.json`` to ``--out``. ``eval``
classifies the latents as shared, A-only or B-only by relative decoder norm,
checks the "only" ones by latent scaling (shrinkage, decoupling), and labels
the surviving ones with the shapes-world concept that predicts them best
(held-out precision and recall); ``--out`` writes every latent's figures.

Example:
    mmlens crosscoder train --a store-base/ --b store-ft/ --site lm.L2.resid --out cc/
    mmlens crosscoder eval --crosscoder cc/ --top 10 --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mmlens.cli.options import JsonOption, OverwriteOption, print_json, stdout_for_json
from mmlens.cli.terminal import progress_console, result_console
from mmlens.errors import MmlensError

app = typer.Typer(name="crosscoder", help="Crosscoders: which latents two models share and which are one's own.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@app.command("train")
def train(
    store_a: Path = typer.Option(..., "--a", help="Model A's activation store (e.g. the base model)."),
    store_b: Path = typer.Option(..., "--b", help="Model B's store, harvested over the same samples."),
    site: str = typer.Option(..., "--site", "-s", help="Site both stores hold, e.g. lm.L2.resid."),
    k: int = typer.Option(100, "--k", help="Latents per token on average (BatchTopK)."),
    expansion: int = typer.Option(32, "--expansion", help="Latents per input dimension."),
    steps: int = typer.Option(2000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(2048, "--batch-size", help="Tokens per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (warm-up 5%, linear decay over the last 20%)."),
    modality: str = typer.Option("all", "--modality", help="Tokens to train on: image, text, special or all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and of the batch order."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the crosscoder."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Train a BatchTopK crosscoder on one site of two stores harvested over the same samples."""
    from mmlens.sae.crosscoder import CFG, CrosscoderConfig, PairedActivations, train_crosscoder

    if (out / CFG).exists() and not overwrite:
        raise MmlensError(f"{out} already holds a crosscoder; give --overwrite or another --out")
    config = CrosscoderConfig(k=k, expansion=expansion, steps=steps, batch_size=batch_size, lr=lr,
                              modality=modality, seed=seed)
    pair = PairedActivations(store_a, store_b, site, modality)
    if k > config.d_sae_for(pair.width):
        raise MmlensError(f"k={k} is larger than the number of latents ({expansion} x {pair.width})")
    console = progress_console()
    with stdout_for_json(as_json):
        every = max(1, steps // 10)

        def progress(step: int, metrics: dict[str, float]) -> None:
            if step % every == 0 or step == steps:
                console.print(f"step {step}/{steps}: FVU {metrics['fvu']:.4f}, L0 {metrics['l0']:.1f}")

        cc = train_crosscoder(pair, config, out, progress=progress)
    summary = {"out": str(out), "site": site, "d_in": cc.d_in, "d_sae": cc.d_sae, "k": cc.k, "rows": len(pair),
               "models": list(cc.models), "training": json.loads((out / "training.json").read_text())["history"][-1]}
    if as_json:
        print_json(summary)
    else:
        result_console().print(f"crosscoder ({cc.d_sae} latents, k {cc.k}) written to {escape(str(out))}/",
                               highlight=False)


@app.command("eval")
def evaluate(
    folder: Path = typer.Option(..., "--crosscoder", "-c", help="Crosscoder folder (mmlens crosscoder train)."),
    store_a: Optional[Path] = typer.Option(None, "--a", help="Model A's store (default: the one it trained on)."),
    store_b: Optional[Path] = typer.Option(None, "--b", help="Model B's store (default: the one it trained on)."),
    top: int = typer.Option(10, "--top", help="Label this many surviving A-only and B-only latents (most firing)."),
    low: float = typer.Option(0.1, "--low", help="Relative decoder norm at or below which a latent is A-only."),
    high: float = typer.Option(0.9, "--high", help="Relative decoder norm at or above which a latent is B-only."),
    max_nu: float = typer.Option(0.5, "--max-nu", help="Latent-scaling ratio above which an 'only' latent is "
                                 "flagged (shrinkage: error ratio; decoupling: reconstruction ratio)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON file with every latent's figures."),
    as_json: bool = JsonOption,
) -> None:
    """Shared / A-only / B-only latents, their latent-scaling check, and labels of the surviving ones."""
    from mmlens.sae.crosscoder import PairedActivations, load_crosscoder
    from mmlens.sae.crosscoder_scaling import analyse

    cc = load_crosscoder(folder)
    stores = cc.extra.get("stores") or [None, None]
    store_a, store_b = store_a or stores[0], store_b or stores[1]
    if store_a is None or store_b is None or cc.site is None:
        raise MmlensError(f"{folder} does not name its stores and site; give --a and --b")
    console = progress_console()
    with stdout_for_json(as_json):
        pair = PairedActivations(store_a, store_b, cc.site, cc.extra.get("modality", "all"))
        report = analyse(cc, pair, low=low, high=high, max_nu_error=max_nu, max_nu_recon=max_nu)
        result: dict[str, Any] = {"crosscoder": str(folder), "site": cc.site, "models": list(cc.models),
                                  "fvu": report.fvu, "l0": report.l0, "counts": report.counts(), "latents": {}}
        for name in ("B-only", "A-only"):
            chosen = report.latents(name, surviving=True)[:top]
            labels = _labels(cc, pair, chosen, console)
            result["latents"][name] = [{**report.row(j), "label": labels.get(j)} for j in chosen]
        _print(result_console(), result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "all": [report.row(j) for j in range(cc.d_sae)]}, indent=1) + "\n")
    if as_json:
        print_json(result)


def _labels(cc, pair, latents: list[int], console: Console) -> dict[int, Any]:
    """Held-out shapes-world labels, or none (with a note) when the stores' samples have no ground truth."""
    from mmlens.sae.crosscoder_scaling import label_latents

    try:
        return {label.latent: label.to_json() for label in label_latents(cc, pair, latents)}
    except MmlensError as error:
        console.print(f"no labels: {escape(str(error))}")
        return {}


def _print(console: Console, result: dict[str, Any]) -> None:
    counts = result["counts"]
    console.print(f"FVU A {result['fvu']['A']:.4f}, B {result['fvu']['B']:.4f}; L0 {result['l0']:.1f}")
    console.print(f"latents: {counts['shared']} shared, {counts['A-only']} A-only "
                  f"({counts['A-only surviving']} survive latent scaling), {counts['B-only']} B-only "
                  f"({counts['B-only surviving']} survive), {counts['dead']} dead")
    for name, rows in result["latents"].items():
        for row in rows:
            label = row["label"]
            text = f"{label['concept']} (precision {label['precision']:.2f}, recall {label['recall']:.2f})" \
                if label and label.get("concept") else "no label"
            console.print(f"  {name} latent {row['latent']}: fires {row['fires']}, delta {row['delta']}, "
                          f"nu_error {row['nu_error']}, nu_recon {row['nu_recon']}: {escape(text)}")


__all__ = ["app"]
