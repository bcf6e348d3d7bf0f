"""``mmlens sae dashboard``: one HTML page per SAE latent, linked from an index, from an activation store.

Each page: the latent's automatic shapes-world label (precision and recall on
held-out samples), its top image patches as crops with the activation over
them, its top text tokens in context, the activation histogram, the modality
mix, and the tokens it promotes and suppresses through the unembedding.

Example:
    mmlens sae dashboard --sae sae/ --store store/ --out dash/ --latents 3,17,40
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from mmlens.cli.options import JsonOption, ModelOption, print_json, stdout_for_json
from mmlens.cli.terminal import progress_console, result_console
from mmlens.errors import MmlensError


def dashboard(
    sae: Path = typer.Option(..., "--sae", help="SAE folder (cfg.json + sae_weights.safetensors)."),
    store: Path = typer.Option(..., "--store", help="Activation store holding the SAE's site (mmlens harvest)."),
    out: Path = typer.Option(Path("sae-dashboard"), "--out", "-o", help="Folder for index.html and the latent pages."),
    site: Optional[str] = typer.Option(None, "--site", help="Site to read (default: the SAE's own)."),
    latents: Optional[str] = typer.Option(None, "--latents", help="Latents to show, comma-separated (default: "
                                          "the --n-latents that fire most)."),
    n_latents: int = typer.Option(32, "--n-latents", help="How many latents when --latents is not given."),
    images: int = typer.Option(8, "--images", help="Top image patches (one per sample) per latent."),
    texts: int = typer.Option(8, "--texts", help="Top text tokens per latent."),
    labels: bool = typer.Option(True, "--labels/--no-labels", help="Automatic shapes-world labels."),
    logits: bool = typer.Option(True, "--logits/--no-logits", help="Promoted and suppressed tokens (loads the "
                                "store's model for its unembedding)."),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
) -> None:
    """Write an index and one page per latent of --sae over the tokens of --store."""
    console = progress_console()
    with stdout_for_json(as_json):
        summary = write_dashboard(sae, store, out, site=site, latents=_latent_list(latents), n_latents=n_latents,
                                  images=images, texts=texts, labels=labels, logits=logits, model=model,
                                  console=console)
        result_console().print(f"wrote {summary['pages']} latent pages; open {escape(summary['index'])}", highlight=False,
                      soft_wrap=True)
    if as_json:
        print_json(summary)


def write_dashboard(sae_folder: Path, store_folder: Path, out: Path, *, site: str | None = None,
                    latents: list[int] | None = None, n_latents: int = 32, images: int = 8, texts: int = 8,
                    labels: bool = True, logits: bool = True, model: str | None = None,
                    console: Console | None = None) -> dict:
    """What the command does, callable from Python; returns the summary it prints with --json.

    Example:
        >>> write_dashboard(Path("sae"), Path("store"), Path("dash"), logits=False)["pages"]  # doctest: +SKIP
        32
    """
    from mmlens.report.sae_pages import write_sae_pages
    from mmlens.sae.codes import encode_store, store_samples
    from mmlens.sae.dashboard import build_dashboards, unembedding_of
    from mmlens.sae.files import load_sae
    from mmlens.sae.labels import concept_table
    from mmlens.store import Store

    console = console or Console(stderr=True)
    autoencoder = load_sae(sae_folder)
    opened = Store.open(store_folder)
    codes = encode_store(autoencoder, opened, site)
    load = store_samples(opened)
    concepts, note = None, "labels off"
    if labels:
        concepts = concept_table(opened.tokens, load)
        note = "labels from shapes-world ground truth" if concepts.known.any() else "no shapes-world samples: no labels"
        concepts = concepts if concepts.known.any() else None
    unembedding = None
    if logits:
        from mmlens.cli.samples import load_model

        unembedding = unembedding_of(load_model(console, model or opened.model))
    boards = build_dashboards(autoencoder, opened, latents, codes=codes, unembedding=unembedding, concepts=concepts,
                              n_latents=n_latents, n_images=images, n_texts=texts)
    facts = {"site": codes.site, "architecture": autoencoder.architecture, "d_in": autoencoder.d_in,
             "latents": autoencoder.d_sae, "k": autoencoder.k, "store": str(store_folder), "tokens": len(opened),
             "labels": note}
    index = write_sae_pages(boards, out, load, title=f"SAE latents at {codes.site}", facts=facts)
    return {"index": str(index), "pages": len(boards), "latents": [b.latent for b in boards], "site": codes.site,
            "labels": {b.latent: b.label.to_json() for b in boards if b.label is not None}}


def _latent_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MmlensError(f"--latents takes comma-separated latent numbers, got {text!r}") from None
