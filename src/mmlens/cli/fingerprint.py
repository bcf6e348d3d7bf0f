"""``mmlens fingerprint``: is a suspect model derived from a victim? CKA of hidden states on probe samples.

Writes ``fingerprint.json`` (every score, interval and layer matrix), one
layer-matrix figure per suspect and probe set, a score figure and
``fingerprint.html`` into ``--out``. The scoring rule is fixed: see
:mod:`mmlens.represent.fingerprint` and ``docs/represent.md``.

Example:
    mmlens fingerprint --victim shapes-llava --suspect shapes-llava-pruned --suspect out/zoo/domains-llava-v2 --n 200
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from mmlens.cli.options import JsonOption, OutOption, OverwriteOption, print_json, stdout_for_json
from mmlens.cli.terminal import drop_empty, progress_console, result_console, whole_column
from mmlens.errors import MmlensError, check_choice
from mmlens.represent.cka import KINDS
from mmlens.represent.fingerprint import PROBE_SETS, collect_last_token, fingerprint as compare, probe_samples


def fingerprint(
    victim: str = typer.Option(..., "--victim", help="The original model: zoo name or local folder."),
    suspect: list[str] = typer.Option(..., "--suspect", help="A model to test against the victim; repeatable."),
    n: int = typer.Option(200, "--n", help="Probe samples per probe set."),
    probe_set: list[str] = typer.Option(["off-task", "on-task"], "--probe-set",
                                        help="off-task (scored) and/or on-task; repeatable."),
    boot: int = typer.Option(1000, "--boot", help="Bootstrap resamples of the probe samples."),
    group: Optional[list[str]] = typer.Option(None, "--group", help="NAME=GROUP labels for the table and figure "
                                              "(e.g. shapes-llava-pruned=derivative); repeatable."),
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Score each --suspect against --victim by CKA of last-token hidden states; write a table, figures and JSON."""
    from mmlens.report.output import OutputFolder

    for name in probe_set:
        check_choice(name, PROBE_SETS, "--probe-set")
    if boot < 10:
        raise MmlensError(f"--boot must be at least 10, got {boot}")
    groups = _groups(group)
    folder = OutputFolder(out, "fingerprint", locals(), overwrite=overwrite, result="fingerprint",
                          seeds={"bootstrap": 0, "probe_first_index": 5000})
    with stdout_for_json(as_json), folder:
        summary = run(victim, suspect, n, probe_set, boot, folder.path, progress_console(), groups)
        result_console().print(summary_table(summary["rows"]))
    if as_json:
        print_json({"out": str(folder.out), **{k: v for k, v in summary.items() if k != "matrices"}})


def run(victim: str, suspects: list[str], n: int, probe_sets: list[str], boot: int, folder: Path,
        console: Console, groups: dict[str, str] | None = None) -> dict[str, Any]:
    """The work of ``mmlens fingerprint``; returns what ``fingerprint.json`` holds."""
    import mmlens
    from mmlens.report.files import save_json
    from mmlens.report.fingerprint_pages import cka_matrix_figure, fingerprint_page, save_figure, score_figure

    groups = groups or {}
    samples = {kind: probe_samples(kind, n) for kind in probe_sets}
    timing: dict[str, float] = {}

    def states(name: str) -> dict[str, Any]:
        with console.status(f"loading {name}"):
            model = mmlens.load(name)
        start = time.perf_counter()
        reps = {kind: collect_last_token(model, samples[kind]) for kind in probe_sets}
        timing[f"collect {name}"] = round(time.perf_counter() - start, 3)
        return reps

    reference = states(victim)
    rows, figures = [], []
    for name in suspects:
        reps = states(name)
        for kind in probe_sets:
            start = time.perf_counter()
            result = compare(reference[kind], reps[kind], n_boot=boot, kinds=KINDS)
            timing[f"cka {name} {kind}"] = round(time.perf_counter() - start, 3)
            row = {**result.to_json(), "probe_set": kind, "group": groups.get(name, "")}
            rows.append(row)
            figure = f"cka_{_slug(name)}_{kind}.png"
            save_figure(cka_matrix_figure(result.matrices, _short(victim), _short(name)), folder / figure)
            figures.append(figure)
    for kind in probe_sets:
        chosen = [r for r in rows if r["probe_set"] == kind]
        figure = f"scores_{kind}.png"
        save_figure(score_figure(chosen, f"victim {_short(victim)}, {kind} probes, n={n}"), folder / figure)
        figures.insert(0, figure)
    summary = {"victim": victim, "n": n, "probe_sets": probe_sets, "boot": boot, "rows": rows,
               "timing_s": timing, "figures": figures}
    save_json(summary, folder / "fingerprint.json", "mmlens.Fingerprint", indent=1)
    (folder / "fingerprint.html").write_text(fingerprint_page(victim, rows, figures, folder=folder))
    return summary


def _groups(pairs: Optional[list[str]]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, label = pair.rpartition("=")
        if not sep or not name or not label:
            raise MmlensError(f"--group takes NAME=GROUP (such as shapes-llava-pruned=derivative), got {pair!r}")
        out[name] = label
    return out


def _short(name: str) -> str:
    return Path(name).name if "/" in name else name


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", _short(name))


def summary_table(rows: list[dict[str, Any]]) -> Any:
    """One row per suspect and probe set; suspects whole at 80 columns, no column without a value (--group)."""
    from rich.table import Table

    columns = ["suspect", "group", "probe set", "score", "95% interval", "samples", "dropped"]
    cells = [[_short(r["suspect"]), r["group"], r["probe_set"], f"{r['score']:.3f}",
              f"{r['interval'][0]:.3f}–{r['interval'][1]:.3f}", str(r["samples"]), str(r["dropped"])] for r in rows]
    columns, cells = drop_empty(columns, cells)
    table = Table(title="fingerprint: debiased linear CKA, depth-matched layers")
    for i, column in enumerate(columns):
        if column in ("suspect", "group"):
            whole_column(table, column, [row[i] for row in cells])
        else:
            table.add_column(column, justify="left" if column == "probe set" else "right")
    for row in cells:
        table.add_row(*row)
    return table
