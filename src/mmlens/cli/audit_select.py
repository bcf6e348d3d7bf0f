"""``mmlens audit select``: keep the least redundant fraction of a training set (PRISM).

Scores every sample of ``--data`` that has an image (one forward pass up to
a shallow decoder layer; see :mod:`mmlens.audit.prism`), keeps the least
redundant ``--keep`` fraction of them plus every text-only sample (a row
without an image), and writes
to ``--out``: ``kept.txt`` and ``removed.txt`` (one id a line),
``redundancy.npz`` (ids, scores, pooled vectors), ``summary.json``, and
``redundancy.png`` (the histogram of scores, the cut drawn).

Example:
    mmlens audit select --data redundant-pool:train[0:2400] --keep 0.3 --out prism/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress

from mmlens.cli.audit import app
from mmlens.cli.options import JsonOption, ModelOption, print_json, stdout_for_json
from mmlens.errors import MmlensError


@app.command("select")
def select(
    data: str = typer.Option(..., "--data", "-d", help="Dataset (a .jsonl, a folder, redundant-pool:train[0:2400], ...)."),
    keep: float = typer.Option(0.3, "--keep", help="Fraction of the image samples to keep, in (0, 1]."),
    out: Path = typer.Option(Path("audit-select"), "--out", "-o", help="Folder for the ids, scores and figure."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Decoder layer to pool (default: a quarter of the "
                                        "way up, L1 of 4)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Samples per forward pass."),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
) -> None:
    """Score --data with PRISM and write the kept and removed sample ids."""
    console = Console(stderr=True)
    with stdout_for_json(as_json):
        summary = audit_select(data, out, keep=keep, model=model, layer=layer, batch_size=batch_size,
                               console=console)
        console.print(f"kept {summary['kept']} of {summary['scored'] + summary['text_only']} "
                      f"({summary['text_only']} text-only, always kept); ids in {out}", highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)


def audit_select(data: str, out: Path, *, keep: float = 0.3, model: str | None = None, layer: int | None = None,
                 batch_size: int = 16, console: Console | None = None) -> dict:
    """What the command does, callable from Python; returns its --json summary.

    Example:
        >>> audit_select("redundant-pool:train[0:2400]", Path("prism"), keep=0.3)["kept"]  # doctest: +SKIP
        720
    """
    import mmlens.audit.redundant_pool  # noqa: F401  (registers the redundant-pool world)
    from mmlens.audit.prism import check_keep, pooled_image_states, prism_select
    from mmlens.cli.samples import load_model
    from mmlens.data.readers import open_reader
    from mmlens.data.sample import Sample

    check_keep(keep)  # before anything loads
    if batch_size < 1:
        raise MmlensError("--batch-size must be at least 1")
    console = console or Console(stderr=True)
    reader = open_reader(data)
    loaded = load_model(console, model)
    if not loaded.adapter.multimodal:
        raise MmlensError(f"{loaded.name} is a text-only model: PRISM scores image tokens")
    bad: list = []

    def samples():
        text_only: list[Sample] = []

        def on_bad(_, row) -> None:  # a row without an image is a text-only sample (kept), not a bad one
            if row.reason == "no image":
                text_only.append(Sample(row.row_id, None, "", None, {}))
            else:
                bad.append(row)

        for _, sample in reader.read(on_bad=on_bad):
            yield from text_only
            text_only.clear()
            yield sample
        yield from text_only

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("scoring", total=len(reader))
        try:
            table = pooled_image_states(loaded, samples(), layer=layer, batch_size=batch_size,
                                        progress=lambda n: progress.advance(task, n))
        except MmlensError:
            if bad:  # rows were unreadable: say why (the first one) instead of "no images"
                raise MmlensError(f"no sample of {data} could be scored ({len(bad)} bad rows; {bad[0]})") from None
            raise
    result = prism_select(table, keep=keep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kept.txt").write_text("".join(f"{i}\n" for i in result.kept), encoding="utf-8")
    (out / "removed.txt").write_text("".join(f"{i}\n" for i in result.removed), encoding="utf-8")
    np.savez(out / "redundancy.npz", ids=np.array(table.ids), scores=result.scores, vectors=table.vectors)
    summary = {**result.summary(), "model": loaded.name, "data": data, "layer": table.layer,
               "bad_rows": [b.to_json() for b in bad]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    write_histogram(out / "redundancy.png", result.scores, summary["threshold"])
    return summary


def write_histogram(path: Path, scores: np.ndarray, threshold: float | None) -> None:
    """The redundancy histogram, with the cut (lowest removed score) as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(scores, bins=50, color="#8fb3d9")
    if threshold is not None:
        ax.axvline(threshold, color="#d9623b", linewidth=1, label="removed from here up")
        ax.legend(fontsize=7)
    ax.set_xlabel("redundancy: mean cosine to the other samples", fontsize=8)
    ax.set_ylabel("samples", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
