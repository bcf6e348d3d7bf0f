"""``mmlens probe``: linear probes with control tasks on an activation store of the shapes world.

Reads a store written by ``mmlens harvest`` (``docs/store.md``), builds the
probe tasks' labels from the shapes world's ground truth, fits a logistic (or
ridge) probe per task and site on a split by sample, and writes
``probes.json`` and ``probe_accuracy.png`` (accuracy by site for every probe,
control tasks dashed) into ``--out``.

Example:
    mmlens harvest --data "shapes:test[0:400]" --sites "lm.embed,lm.L*.resid" --modalities image,text --out store/
    mmlens probe --store store/ --out probes/ --json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from mmlens.cli.options import JsonOption, OutOption, OverwriteOption, print_json, stdout_for_json
from mmlens.cli.terminal import progress_console, result_console, whole_column
from mmlens.errors import MmlensError
from mmlens.represent.probe_tasks import TASKS


def probe(
    store: Path = typer.Option(..., "--store", help="An activation store of shapes-world samples (mmlens harvest)."),
    task: Optional[list[str]] = typer.Option(None, "--task", help=f"Probe task; repeatable (default all: "
                                             f"{', '.join(TASKS)})."),
    site: Optional[list[str]] = typer.Option(None, "--site", help="Site to probe; repeatable (default every site "
                                             "in the store)."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="Share of samples held out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and of the control labels."),
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Fit linear probes and their control tasks at every site of --store; write a table, a figure and JSON."""
    from mmlens.report.output import OutputFolder
    from mmlens.store import Store

    if not store.is_dir():
        raise MmlensError(f"--store {store}: no such folder (write one with mmlens harvest)")
    opened = Store.open(store)
    names = list(task) if task else list(TASKS)
    folder = OutputFolder(out, "probe", {"store": str(store), "task": names, "site": site,
                          "test_fraction": test_fraction, "seed": seed}, overwrite=overwrite,
                          result="probes", seeds={"split_and_control": seed})
    with stdout_for_json(as_json), folder:
        summary = run(opened, names, site, test_fraction, seed, folder.path, progress_console())
        result_console().print(summary_table(summary["tasks"]))
    if as_json:
        print_json({"out": str(folder.out), **summary})


def run(store: Any, names: list[str], sites: Optional[list[str]], test_fraction: float, seed: int, folder: Path,
        console: Console) -> dict[str, Any]:
    """The work of ``mmlens probe``; returns what ``probes.json`` holds."""
    from mmlens.report.files import save_json
    from mmlens.report.fingerprint_pages import probe_accuracy_figure, save_figure
    from mmlens.represent.probe_tasks import shapes_tasks
    from mmlens.represent.probes import train_probes

    start = time.perf_counter()
    with console.status("building labels"):
        tasks = shapes_tasks(store, names, seed)
    labels_s = time.perf_counter() - start
    with console.status("fitting probes"):
        results = train_probes(store, tasks, sites, test_fraction=test_fraction, seed=seed)
    chosen = results[0]["sites"]
    curves = {r["task"]: {"accuracy": [r["by_site"][s]["accuracy"] for s in chosen],  # R² may be below 0: shown
                          "control": [r["by_site"][s]["control"] for s in chosen],
                          **({"metric": "r2"} if r["kind"] == "regress" else {})} for r in results}
    figure = probe_accuracy_figure(curves, f"{store.model}: linear probes by site (held-out samples)",
                                   [s.replace(".resid", "") for s in chosen])
    save_figure(figure, folder / "probe_accuracy.png")
    summary = {"store": str(store.folder), "model": store.model, "tasks": results,
               "seconds": {"labels": round(labels_s, 3), "total": round(time.perf_counter() - start, 3)},
               "figures": ["probe_accuracy.png"]}
    save_json(summary, folder / "probes.json", "mmlens.Probes", indent=1)
    return summary


def summary_table(results: list[dict[str, Any]]) -> Any:
    """One row per task at its best site; tasks and sites whole at 80 columns, the short headers in the caption."""
    from rich import box
    from rich.table import Table

    table = Table(title="linear probes (held-out samples): best site", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True,
                  pad_edge=False, caption="acc: held-out accuracy (R² for the -scalar tasks, which regress); "
                  "ctrl: the control task's; sel: acc - ctrl; maj: the majority class's accuracy")
    whole_column(table, "task", [r["task"] for r in results])
    table.add_column("tokens", no_wrap=True, min_width=len("special"))
    table.add_column("rows", justify="right", no_wrap=True, min_width=5)
    whole_column(table, "best site", [r["best"]["site"] for r in results])
    for column in ("acc", "ctrl", "sel", "maj"):
        table.add_column(column, justify="right", no_wrap=True, min_width=5)
    for r in results:
        best = r["best"]
        table.add_row(r["task"], r["modality"], str(r["rows"]), best["site"], f"{best['accuracy']:.2f}",
                      f"{best['control']:.2f}", f"{best['selectivity']:.2f}",
                      "—" if r["majority"] is None else f"{r['majority']:.2f}")
    return table
