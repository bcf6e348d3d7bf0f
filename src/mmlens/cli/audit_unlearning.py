"""``mmlens audit unlearning``: how often prompt and activation-perturbation audits bring a forgotten fact back.

``--model`` (repeatable) names unlearned models (folders written by
:func:`mmlens.audit.unlearning_methods.save_unlearned`, labelled by the method
in their ``unlearning.json``, or any model); without it the command first
unlearns ``--forget`` from ``--base`` with each of ``--methods`` into
``DIR/models/<method>``. Each model, and ``--base`` as the reference, gets
every audit of :mod:`mmlens.audit.unlearning_audits` (variants chosen on
``val``, scored on ``test``). ``--out`` gets ``rows/<label>.json`` (one per
model, saved after every audit and reused when the command is run again: a
killed run resumes at the audit it was in; an unlearned model in
``DIR/models/<method>`` counts once its ``unlearning.json`` is written),
``summary.json``, ``table.md`` (recovery per method by audit, with 95%
intervals), ``recovery.png`` and ``index.html``.

Example:
    mmlens audit unlearning --base shapes-llava --forget purple --out unlearn/
    mmlens audit unlearning --model out/unlearning/npo --base shapes-llava --forget purple --out unlearn/ --json
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from mmlens.cli.audit import app
from mmlens.cli.options import JsonOption, print_json, stdout_for_json
from mmlens.cli.terminal import progress_console, quiet_transformers, result_console
from mmlens.errors import MmlensError, check_choices
from mmlens.store.files import write_json_atomic


#: Bumped when the audits change, so that rows written before are not reused.
ROWS_VERSION = 2
#: The defaults of --methods and --audits.
DEFAULT_METHODS, DEFAULT_AUDITS = "ga,gd,npo,npo-rt", "direct,paraphrase,another-way,few-shot,steering,noise"


@app.command("unlearning")
def unlearning(
    models: Optional[list[str]] = typer.Option(None, "--model", "-m", help="An unlearned model (repeat for several); "
                                               "default: unlearn --base with each of --methods first."),
    base: str = typer.Option("shapes-llava", "--base", "-b", help="The model before unlearning (the reference row)."),
    forget: str = typer.Option("purple", "--forget", "-f", help="The forgotten fact: a colour of the shapes world."),
    out: Path = typer.Option(Path("audit-unlearning"), "--out", "-o", help="Folder for the table, figures and rows."),
    methods: str = typer.Option(DEFAULT_METHODS, "--methods", show_default=False,
                                help=f"Unlearning methods run when no --model is given (default: {DEFAULT_METHODS})."),
    steps: int = typer.Option(40, "--steps", help="Unlearning steps per method."),
    n_val: int = typer.Option(40, "--n-val", help="Correct and wrong validation samples each (variant choice)."),
    n_test: int = typer.Option(100, "--n-test", help="Correct and wrong test samples each (the reported figures)."),
    audits: str = typer.Option(DEFAULT_AUDITS, "--audits", show_default=False,  # a long default: in the help
                               help=f"Audits to run, comma-separated (default: {', '.join(DEFAULT_AUDITS.split(','))})."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Decoder layers the perturbation audits try, "
                                         "comma-separated (-1: the decoder's input; default: all)."),
    fit_n: int = typer.Option(64, "--fit-n", help="Samples of each kind the concept vector and the noise scale "
                              "are fitted on (train split)."),
    as_json: bool = JsonOption,
) -> None:
    """Audit unlearned models: recovery rate of the forgotten answer per method by audit."""
    with stdout_for_json(as_json):
        summary = audit_unlearning(models or [], base, forget, out, methods=methods.split(","), steps=steps,
                                   n_val=n_val, n_test=n_test, audits=audits.split(","),
                                   fit_n=fit_n, layers=_layers(layers), console=progress_console())
        console = result_console()
        console.print(f"recovery table in {out / 'table.md'}", highlight=False)
        if not as_json:
            console.print((out / "table.md").read_text(encoding="utf-8"), highlight=False, markup=False,
                          soft_wrap=True)  # markdown: a wrapped row is no longer a row
    if as_json:
        print_json(summary)


def train_methods(base: str, word: str, methods: list[str], folder: Path, steps: int,
                  console: Console | None = None, n_forget: int = 128, n_retain: int = 256) -> list[Path]:
    """Unlearn ``word`` from ``base`` with each method into ``folder/<method>`` (kept when already there).

    Example:
        >>> train_methods("shapes-llava", "purple", ["gd"], Path("out/unlearning"), 40)  # doctest: +SKIP
        [PosixPath('out/unlearning/gd')]
    """
    import mmlens
    from mmlens.audit.unlearning import forget_report, forget_set, retain_set
    from mmlens.audit.unlearning_methods import UnlearnConfig, check_method, save_unlearned, unlearn

    for method in methods:
        check_method(method)
    forget_data, retain_data = forget_set("train", n_forget, word), retain_set("train", n_retain, word)
    out = []
    for method in methods:
        target = folder / method
        if not (target / "unlearning.json").is_file():
            model = mmlens.load(base)
            if console is not None:
                console.print(f"unlearning {word} from {base} with {method} ({steps} steps)", highlight=False)
            log = unlearn(model, method, forget_data, retain_data, UnlearnConfig(steps=steps))
            log.update(base=base, forget=word, **forget_report(model, word))
            with quiet_transformers():  # no "Writing model shards" bar of save_pretrained
                save_unlearned(model, target, log)
        out.append(target)
    return out


def _layers(text: str | None) -> list[int] | None:
    """``--layers 0,2`` as ints; anything else is one line."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise MmlensError(f"--layers takes comma-separated layer numbers, got {text!r}") from None


def _saved_row(path: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The row saved at ``path`` by a run with the same arguments (finished or not), else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or cut short by a kill while written by an older mmlens
        return None
    return record if isinstance(record, dict) and record.get("args") == wanted else None


def _label(name: str) -> str:
    record = Path(name) / "unlearning.json"
    if record.is_file():
        return json.loads(record.read_text(encoding="utf-8")).get("method", Path(name).name)
    return Path(name).name or name


def audit_unlearning(models: list[str], base: str, word: str, out: Path, *, methods: list[str] | None = None,
                     steps: int = 40, n_val: int = 40, n_test: int = 100, fit_n: int = 64,
                     audits: list[str] | None = None, layers: list[int] | None = None,
                     console: Console | None = None,
                     on_audit: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """What the command does, callable from Python; returns its --json summary.

    Every model's row is saved after each audit (``rows/<label>.json``): the
    same call after a kill reuses the finished audits and ends with the same
    table. ``on_audit(label, audit)`` is called after each audit is saved.

    Example:
        >>> summary = audit_unlearning(["out/unlearning/gd"], "shapes-llava", "purple", Path("u"))  # doctest: +SKIP
    """
    import mmlens
    from mmlens.audit.unlearning import check_word, forget_report
    from mmlens.audit.unlearning_audits import AUDITS, audit_model

    check_word(word)
    audits = check_choices(list(audits or AUDITS), AUDITS, "audit")
    if n_val < 2 or n_test < 2 or fit_n < 2:
        raise MmlensError("--n-val, --n-test and --fit-n must be at least 2")
    console = console or progress_console()
    if not models:
        models = [str(p) for p in train_methods(base, word, methods or ["ga", "gd", "npo", "npo-rt"],
                                                out / "models", steps, console)]
    labels = {"base": base, **{_label(m): m for m in models}}
    if len(labels) != len(models) + 1:
        raise MmlensError("two --model entries have the same label (method or folder name); give distinct folders")
    (out / "rows").mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    todo: dict[str, Any] = {}
    for label, name in labels.items():  # load (and check) every model still to audit before auditing any
        path = out / "rows" / f"{label}.json"
        wanted = {"version": ROWS_VERSION, "model": name, "forget": word, "n_val": n_val, "n_test": n_test,
                  "audits": audits,
                  **({"layers": layers} if layers is not None else {}), **({"fit_n": fit_n} if fit_n != 64 else {})}
        record = _saved_row(path, wanted)
        if record is not None and all(a in record["audits"] for a in audits):
            rows[label] = record
            continue
        model = mmlens.load(name)
        if not model.adapter.multimodal:
            raise MmlensError(f"{model.name} is a text-only model: the unlearning audits ask about images")
        todo[label] = (model, record or {"args": wanted, "audits": {}}, path)
    reference = todo["base"][0] if "base" in todo else (mmlens.load(base) if todo else None)
    for label, (model, record, path) in todo.items():
        console.print(f"auditing {label} ({record['args']['model']})", highlight=False)
        if "accuracy" not in record:
            record["accuracy"] = forget_report(model, word, n=n_test)
            write_json_atomic(path, record)

        def finished(audit: str, row: dict[str, Any], label: str = label, record: dict = record,
                     path: Path = path) -> None:  # each audit is saved as it ends: a killed run redoes only its own
            record["audits"][audit] = row
            write_json_atomic(path, record)
            if on_audit is not None:
                on_audit(label, audit)

        audit_model(model, word, n_val, n_test, audits, fit_n, layers=layers, done=record["audits"],
                    reference=None if label == "base" else reference, on_audit=finished)
        rows[label] = json.loads(path.read_text(encoding="utf-8"))  # as a rerun reads it: the same summary
    rows = {label: rows[label] for label in labels}  # the table in the order given
    summary = {"forget": word, "base": base, "models": labels, "audits": audits,
               "table": {label: {a: r["audits"][a]["recovery"] for a in audits} for label, r in rows.items()},
               "accuracy": {label: r["accuracy"] for label, r in rows.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (out / "table.md").write_text(recovery_table(rows, audits), encoding="utf-8")
    write_page(out, rows, audits, word)
    return summary


def recovery_table(rows: dict[str, dict[str, Any]], audits: list[str]) -> str:
    """A markdown table: one row per model, forget/retain accuracy, then each audit's recovery [95% interval].

    Example:
        >>> row = {"accuracy": {"forget_acc": 0.0, "retain_acc": 1.0},
        ...        "audits": {"direct": {"recovery": 0.1, "ci95": [0.0, 0.2]}}}
        >>> recovery_table({"gd": row}, ["direct"]).splitlines()[2]
        '| gd | 0.0 | 100.0 | 10 [0, 20] |'
    """
    head = "| model | forget acc % | retain acc % | " + " | ".join(audits) + " |"
    lines = [head, "|" + "---|" * (3 + len(audits))]
    for label, r in rows.items():
        cells = [f"{100 * r['audits'][a]['recovery']:.0f} [{100 * r['audits'][a]['ci95'][0]:.0f}, "
                 f"{100 * r['audits'][a]['ci95'][1]:.0f}]" for a in audits]
        acc = r["accuracy"]
        lines.append(f"| {label} | {100 * acc['forget_acc']:.1f} | {100 * acc['retain_acc']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_page(out: Path, rows: dict[str, dict[str, Any]], audits: list[str], word: str) -> Path:
    """``recovery.png`` (bars per model and audit, 95% intervals) and ``index.html`` (tables, chosen variants)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mmlens.report.figures import png_data_uri

    fig = Figure(figsize=(max(6.0, 1.4 * len(audits) * max(1, len(rows)) / 3) + 1.4, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(rows))
    for k, (label, r) in enumerate(rows.items()):
        vals = np.array([r["audits"][a]["recovery"] for a in audits])
        lo = vals - np.array([r["audits"][a]["ci95"][0] for a in audits])
        hi = np.array([r["audits"][a]["ci95"][1] for a in audits]) - vals
        ax.bar(np.arange(len(audits)) + k * width, vals, width, yerr=[lo, hi], capsize=2, label=label)
    ax.set_xticks(np.arange(len(audits)) + 0.4 - width / 2, audits, fontsize=8)
    ax.set_ylabel(f"recovery of '{word}'")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over one
    fig.savefig(out / "recovery.png", dpi=90)
    chosen = "".join(f"<tr><td>{html.escape(label)}</td>" + "".join(
        f"<td>{html.escape(r['audits'][a]['chosen'])}<br>{r['audits'][a]['correct_rate']:.2f} - "
        f"{r['audits'][a]['wrong_rate']:.2f}</td>" for a in audits) + "</tr>" for label, r in rows.items())
    page = (f"<!doctype html><meta charset='utf-8'><title>Unlearning audit</title>"
            f"<h1>Unlearning audit: does '{html.escape(word)}' come back?</h1>"
            f"<p>Recovery = rate of the forgotten answer where it is correct minus its rate where it is wrong "
            f"(test split; the variant of each audit chosen on validation; 95% bootstrap intervals).</p>"
            f"<pre>{html.escape(recovery_table(rows, audits))}</pre><img src='{png_data_uri(fig, dpi=90)}' alt='recovery'>"
            f"<h2>Chosen variants (hit rate correct - wrong)</h2><table border=1><tr><th>model</th>"
            + "".join(f"<th>{html.escape(a)}</th>" for a in audits) + f"</tr>{chosen}</table>")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
