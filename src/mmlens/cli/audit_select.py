"""``mmlens audit select``: keep the least redundant fraction of a training set (PRISM).

Scores every sample of ``--data`` that has an image (one forward pass up to
a shallow decoder layer; see :mod:`mmlens.audit.prism`), keeps the least
redundant ``--keep`` fraction of them plus every text-only sample (a row
without an image), and writes
to ``--out``: ``kept.txt`` and ``removed.txt`` (one id a line),
``redundancy.npz`` (ids, scores, pooled vectors), ``summary.json``,
``redundancy.png`` (the histogram of scores, the cut drawn), and ``scores/``
(the pooled vectors shard by shard: a killed run, started again with the
same command, continues and ends with the same ids).

Example:
    mmlens audit select --data redundant-pool:train[0:2400] --keep 0.3 --out prism/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer
from rich.console import Console

from mmlens.cli.audit import app
from mmlens.cli.options import JsonOption, ModelOption, print_json, stdout_for_json
from mmlens.cli.terminal import progress_bar, progress_console, result_console
from mmlens.errors import MmlensError


@app.command("select")
def select(
    data: str = typer.Option(..., "--data", "-d", help="Dataset (a .jsonl, a folder, redundant-pool:train[0:2400], ...)."),
    keep: float = typer.Option(0.3, "--keep", help="Fraction of the image samples to keep, in (0, 1]."),
    out: Path = typer.Option(Path("audit-select"), "--out", "-o", help="Folder for the ids, scores and figure."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Decoder layer to pool (default: a quarter of the "
                                        "way up, L1 of 4)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Samples per forward pass."),
    shard_size: int = typer.Option(64, "--shard-size", help="Rows per saved shard of scores (a killed run "
                                   "continues from the last one)."),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
) -> None:
    """Score --data with PRISM and write the kept and removed sample ids."""
    console = progress_console()
    with stdout_for_json(as_json):
        summary = audit_select(data, out, keep=keep, model=model, layer=layer, batch_size=batch_size,
                               shard_size=shard_size, console=console)
        result_console().print(f"kept {summary['kept']} of {summary['scored'] + summary['text_only']} "
                      f"({summary['text_only']} text-only, always kept); ids in {out}", highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)


def audit_select(data: str, out: Path, *, keep: float = 0.3, model: str | None = None, layer: int | None = None,
                 batch_size: int = 16, shard_size: int = 64, console: Console | None = None,
                 on_shard: Callable[[str], None] | None = None) -> dict:
    """What the command does, callable from Python; returns its --json summary.

    The pooled vectors are kept in ``out/scores`` shard by shard (:mod:`mmlens.runner.scores`):
    the same call after a kill continues. ``on_shard`` gets each finished shard's id.

    Example:
        >>> audit_select("redundant-pool:train[0:2400]", Path("prism"), keep=0.3)["kept"]  # doctest: +SKIP
        720
    """
    import mmlens.audit.redundant_pool  # noqa: F401  (registers the redundant-pool world)
    from mmlens.audit.prism import (PooledTable, check_keep, check_scored, pooled_image_states, prism_select,
                                    scoring_layer)
    from mmlens.runner.scores import ShardScores, concat, model_spec, run_scores, unreadable
    from mmlens.cli.samples import load_model
    from mmlens.data.readers import BadRow, open_reader

    check_keep(keep)  # before anything loads
    if batch_size < 1 or shard_size < 1:
        raise MmlensError("--batch-size and --shard-size must be at least 1")
    console = console or progress_console()
    reader = open_reader(data)
    loaded = load_model(console, model)
    if not loaded.adapter.multimodal:
        raise MmlensError(f"{loaded.name} is a text-only model: PRISM scores image tokens")
    layer = scoring_layer(loaded, layer)
    spec = {"job": "prism", "model": model_spec(loaded), "layer": layer, "batch_size": batch_size}

    def score(rows: list) -> ShardScores:
        found = ShardScores([], {}, {"text_only": []}, [])
        for row in rows:  # a row without an image is a text-only sample (kept), not a bad one
            if isinstance(row, BadRow) and row.reason != "no image":
                found.bad.append(row.to_json())
            elif isinstance(row, BadRow) or getattr(row, "image", None) is None:
                found.extra["text_only"].append(row.row_id if isinstance(row, BadRow) else row.id)
        images = [r for r in rows if not isinstance(r, BadRow) and getattr(r, "image", None) is not None]
        if images:
            table = pooled_image_states(loaded, images, layer=layer, batch_size=batch_size)
            found.ids, found.arrays["vectors"] = table.ids, table.vectors
        return found

    with progress_bar(console) as progress:
        task = progress.add_task("scoring", total=len(reader))
        shards = run_scores(out / "scores", reader, spec, score, shard_size=shard_size,
                            progress=lambda n: progress.advance(task, n), on_shard=on_shard)
    bad = [row for s in shards for row in s.bad]
    ids = [i for s in shards for i in s.ids]
    text_only = [i for s in shards for i in s.extra["text_only"]]
    if not ids and bad:  # rows were unreadable: say why (the first one) instead of "no images"
        raise unreadable(data, bad)
    check_scored(ids, text_only)
    table = PooledTable(ids, concat(shards, "vectors"), layer, text_only)
    result = prism_select(table, keep=keep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kept.txt").write_text("".join(f"{i}\n" for i in result.kept), encoding="utf-8")
    (out / "removed.txt").write_text("".join(f"{i}\n" for i in result.removed), encoding="utf-8")
    np.savez(out / "redundancy.npz", ids=np.array(table.ids), scores=result.scores, vectors=table.vectors)
    summary = {**result.summary(), "model": loaded.name, "data": data, "layer": table.layer,
               "bad_rows": bad}
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
