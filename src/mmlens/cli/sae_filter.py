"""``mmlens sae filter``: keep the samples whose image and text an SAE sees as most aligned (SAE-V).

Scores every sample of ``--data`` with SAE-V (:mod:`mmlens.sae.crossmodal`)
and writes the ids of the top ``--keep`` fraction to ``kept.txt`` and the rest
to ``removed.txt``, one id a line, best first, with every score in
``scores.json``. ``--data`` is an activation store holding the SAE's site, or
any dataset ``mmlens harvest`` reads (it is harvested at the SAE's site into
``OUT/store`` first; a killed run resumes there).

Example:
    mmlens sae filter --data pool.jsonl --sae sae/ --keep 0.5 --out filtered/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from mmlens.cli.options import JsonOption, ModelOption, print_json, stdout_for_json
from mmlens.cli.terminal import progress_console, result_console
from mmlens.errors import MmlensError
from mmlens.sae.crossmodal import WITHIN, SaeVParams

KEPT, REMOVED, SCORES = "kept.txt", "removed.txt", "scores.json"


def sae_filter(
    data: str = typer.Option(..., "--data", "-d", help="An activation store with the SAE's site, or a dataset "
                             "(a .jsonl, a folder, shapes:train[0:1000], ...) to harvest first."),
    sae: Path = typer.Option(..., "--sae", help="SAE folder (cfg.json + sae_weights.safetensors)."),
    keep: float = typer.Option(0.5, "--keep", help="Fraction of samples to keep, highest scores first."),
    out: Path = typer.Option(Path("sae-filter"), "--out", "-o", help="Folder for kept.txt, removed.txt, scores.json."),
    site: Optional[str] = typer.Option(None, "--site", help="Site to read (default: the SAE's own)."),
    top_latents: int = typer.Option(50, "--top-latents", help="SAE-V step 1: latents kept per token."),
    top_tokens: int = typer.Option(30, "--top-tokens", help="SAE-V step 2: tokens kept per latent."),
    min_per_modality: int = typer.Option(5, "--min-per-modality", help="SAE-V step 3: text and image tokens a "
                                         "latent needs among its top tokens to count as cross-modal."),
    pairs: int = typer.Option(5, "--pairs", help="SAE-V step 3: top text and image tokens whose cosines are averaged."),
    within: str = typer.Option("both", "--within", help="SAE-V step 4: sum the latents a sample's image and text "
                               "share (both) or every latent of its tokens (any)."),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
) -> None:
    """Score --data with SAE-V and write the kept and removed sample ids."""
    console = progress_console()
    if within not in WITHIN:
        raise MmlensError(f"--within is one of {', '.join(WITHIN)}, got {within!r}")
    params = SaeVParams(top_latents, top_tokens, min_per_modality, pairs, within)
    with stdout_for_json(as_json):
        summary = filter_data(data, sae, keep, out, params, site=site, model=model, console=console)
        result_console().print(f"kept {summary['kept']} of {summary['samples']} samples ({summary['cross_modal_latents']} "
                      f"cross-modal latents); ids in {escape(summary['kept_file'])}", highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)


def filter_data(data: str, sae_folder: Path, keep: float, out: Path, params: SaeVParams, *, site: str | None = None,
                model: str | None = None, console: Console | None = None) -> dict:
    """What the command does, callable from Python; returns its --json summary.

    Example:
        >>> filter_data("store/", Path("sae"), 0.5, Path("kept"), SaeVParams())["kept"]  # doctest: +SKIP
        500
    """
    from mmlens.sae.crossmodal import keep_top, sae_v_scores
    from mmlens.sae.files import load_sae
    from mmlens.store import Store

    if not 0 < keep <= 1:
        raise MmlensError(f"--keep is a fraction in (0, 1], got {keep}")
    params.check()
    autoencoder = load_sae(sae_folder)
    site = site or autoencoder.site
    if not site:
        raise MmlensError(f"the SAE at {sae_folder} names no site; give --site")
    out.mkdir(parents=True, exist_ok=True)
    if (Path(data) / "manifest.json").is_file():
        store = Store.open(data)
    else:
        store = Store.open(_harvest(data, site, out / "store", model, console or Console(stderr=True)))
    scores = sae_v_scores(autoencoder, store, site, params)
    kept, removed = keep_top(scores.sample_ids, scores.sample_scores, keep)
    (out / KEPT).write_text("".join(f"{s}\n" for s in kept), encoding="utf-8")
    (out / REMOVED).write_text("".join(f"{s}\n" for s in removed), encoding="utf-8")
    (out / SCORES).write_text(json.dumps({"sae": str(sae_folder), "site": site, "keep": keep,
                                          **scores.to_json()}, indent=1), encoding="utf-8")
    return {"samples": len(scores.sample_ids), "kept": len(kept), "removed": len(removed), "site": site,
            "cross_modal_latents": int(scores.cross_modal.sum()), "params": vars(params),
            "kept_file": str(out / KEPT), "removed_file": str(out / REMOVED), "scores_file": str(out / SCORES)}


def _harvest(data: str, site: str, folder: Path, model: str | None, console: Console) -> Path:
    from mmlens.cli.samples import load_model
    from mmlens.data.readers import open_reader
    from mmlens.store.harvest import harvest

    reader = open_reader(data)
    harvest(load_model(console, model), reader, folder, [site])
    return folder
