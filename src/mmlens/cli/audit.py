"""``mmlens audit backdoor``: find backdoor-poisoned training samples by attention collapse (BYE).

Scores every sample of ``--data`` (image + question, one forward pass; see
:mod:`mmlens.audit.backdoor`) and writes to ``--out``: ``kept.txt`` and
``removed.txt`` (one id a line), ``entropy.npz`` (the per-sample entropies),
``scores/`` (the entropies shard by shard: a killed run, started again with
the same command, continues and ends with the same ids),
``summary.json``, and ``index.html`` with ``entropy.png`` (per-layer
histograms, the mixtures drawn). When the samples carry poison labels
(``meta["poisoned"]``, as ``ft-backdoor:train[...]`` does) or ``--labels``
names them (a ``backdoor.json`` or a text file of ids), the summary adds
precision, recall and F1, and lists labelled ids missing from the data.
The published rule is the default; ``--units heads``, ``--separation`` and
``--threshold`` are mmlens' variants.

Example:
    mmlens audit backdoor --model shapes-llava-ft-backdoor --data ft-backdoor:train[0:2000] --out bye/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer
from rich.console import Console

from mmlens.cli.options import JsonOption, ModelOption, print_json, stdout_for_json
from mmlens.cli.terminal import progress_bar, progress_console, result_console
from mmlens.errors import MmlensError

app = typer.Typer(help="Audit training data and models.", no_args_is_help=True)


@app.command("backdoor")
def backdoor(
    data: str = typer.Option(..., "--data", "-d", help="Dataset (a .jsonl, a folder, ft-backdoor:train[0:2000], ...)."),
    out: Path = typer.Option(Path("audit-backdoor"), "--out", "-o", help="Folder for the ids, summary and page."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Poison labels to score against: a backdoor.json "
                                          "or a text file of ids (default: the samples' own, if any)."),
    units: str = typer.Option("layers", "--units", help="layers (published: head mean) or heads (every head)."),
    separation: float = typer.Option(2.0, "--separation", help="A unit is sensitive when |mu1 - mu2| > "
                                     "separation * (sigma1 + sigma2); published: 2."),
    threshold: float = typer.Option(0.0, "--threshold", help="Remove a sample when the score mixture's log "
                                    "likelihood ratio (low against high) exceeds this; published: 0 (posterior 0.5)."),
    refine: bool = typer.Option(False, "--refine", help="Refine BYE's split over every unit and each head's "
                                "image share at once (a shared-covariance mixture started at the published "
                                "split); --threshold then cuts the refined log ratio."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per forward pass."),
    shard_size: int = typer.Option(64, "--shard-size", help="Rows per saved shard of scores (a killed run "
                                   "continues from the last one)."),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
) -> None:
    """Score --data with BYE and write the kept and removed sample ids."""
    console = progress_console()
    with stdout_for_json(as_json):
        summary = audit_backdoor(data, out, model=model, labels=labels, units=units, separation=separation,
                                 threshold=threshold, refine=refine, batch_size=batch_size, shard_size=shard_size,
                                 console=console)
        result_console().print(f"{summary['note']}; kept {summary['kept']} of {summary['samples']}; ids in {out}",
                      highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)


def read_labels(path: Path) -> list[str]:
    """Poisoned ids from a ``backdoor.json`` (``poisoned_ids`` or ``poisoned_indices`` + ``id_format``) or a text file.

    Example:
        >>> read_labels(Path("zoo/weights/shapes-llava-ft-backdoor/backdoor.json"))[:1]  # doctest: +SKIP
        ['shapes-train-95000001']
    """
    if not path.is_file():
        raise MmlensError(f"--labels {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    record = json.loads(text)
    if "poisoned_ids" in record:
        return [str(i) for i in record["poisoned_ids"]]
    if "poisoned_indices" in record:
        form = record.get("id_format", "{index}")
        return [form.format(index=i) for i in record["poisoned_indices"]]
    raise MmlensError(f"--labels {path}: a JSON file needs 'poisoned_ids' or 'poisoned_indices'")


def audit_backdoor(data: str, out: Path, *, model: str | None = None, labels: Path | None = None,
                   units: str = "layers", separation: float = 2.0, threshold: float = 0.0, refine: bool = False,
                   batch_size: int = 8, shard_size: int = 64,
                   console: Console | None = None, on_shard: Callable[[str], None] | None = None) -> dict:
    """What the command does, callable from Python; returns its --json summary.

    The entropies are kept in ``out/scores`` shard by shard (:mod:`mmlens.runner.scores`):
    the same call after a kill continues. ``on_shard`` gets each finished shard's id.

    Example:
        >>> audit_backdoor("ft-backdoor:train[0:400]", Path("bye"), model="shapes-llava-ft-backdoor")["samples"]  # doctest: +SKIP
        400
    """
    import mmlens.audit.ft_data  # noqa: F401  (registers the ft-backdoor worlds)
    from mmlens.audit.backdoor import EntropyTable, attention_entropies, bye_filter, label_scores
    from mmlens.runner.scores import ShardScores, concat, model_spec, run_scores, unreadable
    from mmlens.cli.samples import load_model
    from mmlens.data.readers import BadRow, open_reader
    from mmlens.report.audit_pages import write_audit_page

    if units not in ("layers", "heads"):
        raise MmlensError(f"--units is layers or heads, got {units!r}")
    if separation <= 0 or batch_size < 1 or shard_size < 1:
        raise MmlensError("--separation must be positive, --batch-size and --shard-size at least 1")
    console = console or progress_console()
    reader = open_reader(data)
    loaded = load_model(console, model)
    if not loaded.adapter.multimodal:
        raise MmlensError(f"{loaded.name} is a text-only model: BYE needs a vision-language model")
    spec = {"job": "bye", "model": model_spec(loaded), "per_head": units == "heads", "batch_size": batch_size}
    if refine:  # the refinement also reads each head's image share; only then, so older folders stay reusable
        spec["shares"] = True

    def score(rows: list) -> ShardScores:
        samples = [r for r in rows if not isinstance(r, BadRow)]
        bad = [r for r in rows if isinstance(r, BadRow)]
        flags = {s.id: bool(s.meta["poisoned"]) for s in samples if "poisoned" in s.meta}
        found = ShardScores([], {}, {"poisoned": flags}, [b.to_json() for b in bad])
        if samples:  # a shard of bad rows only has nothing to score
            table = attention_entropies(loaded, samples, batch_size=batch_size, per_head=units == "heads",
                                        shares=refine)
            found.ids, found.arrays["layers"] = table.ids, table.layers
            for name in ("heads", "shares"):
                if getattr(table, name) is not None:
                    found.arrays[name] = getattr(table, name)
        return found

    with progress_bar(console) as progress:
        task = progress.add_task("scoring", total=len(reader))
        shards = run_scores(out / "scores", reader, spec, score, shard_size=shard_size,
                            progress=lambda n: progress.advance(task, n), on_shard=on_shard)
    bad = [row for s in shards for row in s.bad]
    flags = {i: f for s in shards for i, f in s.extra["poisoned"].items()}
    ids = [i for s in shards for i in s.ids]
    if not ids:  # every row was unreadable: say why (the first one) instead of "no samples"
        raise unreadable(data, bad) if bad else MmlensError("the data has no samples to score")
    table = EntropyTable(ids, concat(shards, "layers"), concat(shards, "heads"), shares=concat(shards, "shares"))
    result = bye_filter(table, separation=separation, units=units, threshold=threshold, refine=refine)
    poisoned = read_labels(labels) if labels is not None else [i for i, f in flags.items() if f]
    scored = label_scores(table.ids, result.removed, poisoned) if labels is not None or flags else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "kept.txt").write_text("".join(f"{i}\n" for i in result.kept), encoding="utf-8")
    (out / "removed.txt").write_text("".join(f"{i}\n" for i in result.removed), encoding="utf-8")
    matrix, _ = table.units(units)
    np.savez(out / "entropy.npz", ids=np.array(table.ids), layers=table.layers,
             **{name: getattr(table, name) for name in ("heads", "shares") if getattr(table, name) is not None})
    summary = {**result.summary(), "model": loaded.name, "data": data, "bad_rows": bad,
               "fits": {n: f.to_json() for n, f in zip(result.names, result.fits)}}
    if scored is not None:
        summary["labels"] = scored
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    write_audit_page(out, result, matrix, scored)
    return summary


import mmlens.cli.audit_select  # noqa: E402,F401  (registers `mmlens audit select`)
import mmlens.cli.audit_unlearning  # noqa: E402,F401  (registers `mmlens audit unlearning`)
