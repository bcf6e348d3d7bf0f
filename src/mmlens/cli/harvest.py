"""``mmlens harvest``: activations at chosen sites over a whole dataset, into an activation store.

The store (``docs/store.md``) is written shard by shard; a run killed at any
moment and started again with the same command continues where it stopped,
and ends with the same store as an uninterrupted run. A later run with other
data (same model, sites and settings) appends to the store.

Example:
    mmlens harvest --data "shapes:test[0:200]" --sites "lm.L*.resid" --out store/ --json
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from mmlens.cli.options import JsonOption, ModelOption, print_json, stdout_for_json
from mmlens.cli.samples import load_model
from mmlens.cli.terminal import progress_bar, progress_console, result_console
from mmlens.data.readers import open_reader
from mmlens.errors import MmlensError
from mmlens.store.files import DTYPES
from mmlens.store.harvest import MODALITIES, harvest as run_harvest


def harvest(
    data: str = typer.Option(..., "--data", "-d", help="Dataset: a folder of images, a .jsonl or .parquet file, a "
                             "save_to_disk folder, or a world range such as shapes:test[0:500]."),
    sites: str = typer.Option("lm.L*.resid", "--sites", "-s", help="Sites to store (names or globs, comma-separated); "
                              "per-token language-model sites: lm.L<i>.resid/attn/mlp/neurons, lm.embed."),
    out: Path = typer.Option(Path("store"), "--out", "-o", help="Store folder: new, or a store of the same model, "
                             "sites and settings to resume or append to."),
    model: Optional[str] = ModelOption,
    modalities: str = typer.Option(",".join(MODALITIES), "--modalities", help="Which tokens to store, "
                                   "comma-separated: image, text, special."),
    dtype: str = typer.Option("float16", "--dtype", help=f"Dtype on disk: {', '.join(DTYPES)}."),
    shard_size: int = typer.Option(256, "--shard-size", help="Samples per shard (the unit that a restart redoes)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per forward pass."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt template of an image folder: "
                                         "<image> where the image goes; {name}, {stem}, {parent} from the file."),
    column: Optional[list[str]] = typer.Option(None, "--column", help="Map a field to a dataset column, "
                                               "FIELD=NAME (id, image, images, prompt, answer, box); repeatable."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of a Hugging Face dataset with several."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad row instead of skipping it."),
    ray: bool = typer.Option(False, "--ray", help="Run the shards on Ray workers (a local Ray unless --ray-address); "
                             "needs mmlens\\[ray]."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Address of a running Ray cluster "
                                              "(implies --ray)."),
    as_json: bool = JsonOption,
) -> None:
    """Store activations at --sites for every row of --data; resumable after a kill, appendable."""
    console = progress_console()
    reader = open_reader(data, prompt=prompt, columns=_columns(column), split=split)
    site_list = [s.strip() for s in sites.split(",") if s.strip()]
    modality_list = [m.strip() for m in modalities.split(",") if m.strip()]
    if ray or ray_address:
        from mmlens.runner.ray_harvest import import_ray

        import_ray()  # a missing Ray is one line, before the model loads
    with stdout_for_json(as_json):
        loaded = load_model(console, model)
        with _bar(console) as (on_start, advance):
            if ray or ray_address:
                from mmlens.runner.ray_harvest import harvest_on_ray

                summary = harvest_on_ray(loaded, data, out, site_list, reader_options=dict(
                    prompt=prompt, columns=_columns(column), split=split), modalities=modality_list, dtype=dtype,
                    shard_size=shard_size, batch_size=batch_size, strict=strict, address=ray_address,
                    progress=advance, on_start=on_start)
            else:
                summary = run_harvest(loaded, reader, out, site_list, modalities=modality_list, dtype=dtype,
                                      shard_size=shard_size, batch_size=batch_size, strict=strict,
                                      progress=advance, on_start=on_start)
        _print_summary(result_console(), summary)
    if as_json:
        print_json(summary)


def _columns(pairs: Optional[list[str]]) -> dict[str, str] | None:
    """``["prompt=question"]`` as ``{"prompt": "question"}``; one clear error for a malformed pair."""
    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        field, sep, name = pair.partition("=")
        if not sep or not field.strip() or not name.strip():
            raise MmlensError(f"--column takes FIELD=NAME (such as prompt=question), got {pair!r}")
        mapping[field.strip()] = name.strip()
    return mapping


class _bar:
    """A progress bar of samples, tokens/s and time left, fed by the harvest's callbacks."""

    def __init__(self, console: Console) -> None:
        self.progress = progress_bar(console, TextColumn("harvest"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("samples"), TextColumn("{task.fields[rate]}"),
                                     TimeRemainingColumn())
        self.task = None
        self.tokens = 0
        self.start = time.perf_counter()

    def __enter__(self):
        self.progress.__enter__()
        return self.on_start, self.advance

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def on_start(self, todo: int, done: int) -> None:
        self.task = self.progress.add_task("harvest", total=todo, rate="-")
        self.start = time.perf_counter()

    def advance(self, samples: int, tokens: int) -> None:
        self.tokens += tokens
        self.progress.update(self.task, advance=samples)
        elapsed = time.perf_counter() - self.start
        if elapsed > 0:
            self.progress.update(self.task, rate=f"{self.tokens / elapsed:,.0f} tokens/s")


def _print_summary(console: Console, summary: dict) -> None:
    shards = summary["shards"]
    console.print(f"harvested {summary['samples']:,} samples, {summary['tokens']:,} tokens of {summary['model']} at "
                  f"{len(summary['sites'])} site(s) into {escape(summary['out'])} ({shards['written']} shards written, "
                  f"{shards['skipped']} already there)", highlight=False, soft_wrap=True)
    if summary["bad_rows"]:
        console.print(f"{summary['bad_rows']} bad row(s) skipped: see {escape(summary['errors_file'])}",
                      highlight=False, soft_wrap=True)
