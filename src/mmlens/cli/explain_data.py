"""``mmlens explain --data D --out DIR``: explain every sample of a dataset, resumably, with an index page.

The work is :func:`mmlens.runner.explain_data.explain_dataset`; this module
adds the command line's checks, progress bar and summary.

Example:
    mmlens explain --data "shapes:test[0:100]" --method attention --out explained/ --json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from mmlens.cli.options import print_json, stdout_for_json
from mmlens.cli.samples import load_model
from mmlens.cli.terminal import progress_bar, progress_console, result_console
from mmlens.errors import MmlensError


def explain_data_command(data: str, out: Path, *, model: Optional[str], methods: list[str],
                         options: dict[str, dict], max_new_tokens: Optional[int], shard_size: int,
                         prompt: Optional[str], columns: Optional[dict[str, str]], split: Optional[str],
                         strict: bool, as_json: bool, refused: dict[str, Any]) -> None:
    """Run ``explain --data``; ``refused`` holds the single-sample options, each of which must be unset.

    Example:
        >>> explain_data_command("shapes:test[0:2]", Path("out"), model="tiny-llava", methods=["attention"],
        ...                      options={}, max_new_tokens=1, shard_size=2, prompt=None, columns=None, split=None,
        ...                      strict=False, as_json=False, refused={})  # doctest: +SKIP
    """
    from mmlens.data.readers import open_reader
    from mmlens.runner.explain_data import explain_dataset

    given = [name for name, value in refused.items() if value]
    if given:
        raise MmlensError(f"{', '.join(given)} explain one sample: --data explains each sample's own prompt, "
                          "images and answer")
    reader = open_reader(data, prompt=prompt, columns=columns, split=split)
    console = progress_console()
    with stdout_for_json(as_json):
        loaded = load_model(console, model)
        progress = progress_bar(console, TextColumn("explain"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("samples"), TimeRemainingColumn())
        with progress:
            task = progress.add_task("explain", total=None)

            def on_start(todo: int, done: int) -> None:
                progress.update(task, total=todo)

            summary = explain_dataset(loaded, reader, out, methods, options=options, max_new_tokens=max_new_tokens,
                                      shard_size=shard_size, strict=strict, on_start=on_start,
                                      progress=lambda n: progress.update(task, advance=n))
        shards, console = summary["shards"], result_console()
        console.print(f"explained {summary['samples']:,} samples with {', '.join(methods)} into "
                      f"{escape(summary['out'])} ({shards['written']} shards written, {shards['skipped']} already "
                      f"there); index: {escape(summary['index'])}", highlight=False, soft_wrap=True)
        if summary["bad_rows"]:
            console.print(f"{summary['bad_rows']} bad row(s) skipped: see {escape(summary['errors_file'])}",
                          highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)
