"""``mmlens explain``: why did the model answer this? Heatmaps, word scores, an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from mmlens.attribution.api import DEFAULT_METHODS, METHODS, explain as run_explain
from mmlens.attribution.explanation import IMAGE_SHARE, Explanation
from mmlens.cli.options import (
    ImageOption,
    JsonOption,
    MemoryBudgetOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    PromptFileOption,
    PromptOption,
    memory_budget as parse_memory_budget,
    print_json,
    stdout_for_json,
)
from mmlens.cli.samples import load_with_input, read_prompt
from mmlens.cli.terminal import progress_bar, progress_console, result_console, whole_column
from mmlens.errors import check_choices
from mmlens.report.files import save_explanation
from mmlens.report.html import what_was_explained, write_html_report
from mmlens.report.output import OutputFolder


def explain(
    image: Optional[list[Path]] = ImageOption,
    prompt: Optional[str] = PromptOption,
    prompt_file: Optional[Path] = PromptFileOption,
    model: Optional[str] = ModelOption,
    method: Optional[list[str]] = typer.Option(None, "--method", help=f"Repeatable; one of {', '.join(METHODS)}."),
    target: Optional[str] = typer.Option(None, "--target", help="Explain this answer (teacher-forced) instead of the model's own."),
    foil: Optional[str] = typer.Option(None, "--foil", help="Contrast the target against this answer."),
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", help="Most tokens of the generated answer to explain (default: the model's "
        "answer length, one word for shapes-llava, else 8); generation also stops at the end token."),
    window: int = typer.Option(1, "--window", min=1, help="Occlusion hides window x window patches of the "
                               "image grid at a time (576 patches with --window 4: 36 passes, not 576)."),
    memory_budget: Optional[str] = MemoryBudgetOption,
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Explain every sample of a dataset (as mmlens "
                                       "harvest reads it) into --out: one explanation per sample, a table, "
                                       "index.html; resumable. --prompt is then a folder's prompt template."),
    shard_size: int = typer.Option(16, "--shard-size", help="With --data: samples per shard (what a restart redoes)."),
    column: Optional[list[str]] = typer.Option(None, "--column", help="With --data: FIELD=NAME column map."),
    split: Optional[str] = typer.Option(None, "--split", help="With --data: split of a Hugging Face dataset."),
    strict: bool = typer.Option(False, "--strict", help="With --data: stop at the first bad row."),
) -> None:
    """Explain each answer token with several attribution methods; write report.html, explanation.json and PNGs."""
    if data is not None:  # a whole dataset: mmlens.cli.explain_data
        from mmlens.cli.explain_data import explain_data_command
        from mmlens.cli.harvest import _columns

        methods = check_choices(list(method or DEFAULT_METHODS), METHODS, "method")
        explain_data_command(data, out, model=model, methods=methods, max_new_tokens=max_new_tokens,
                             options=method_options(methods, window, parse_memory_budget(memory_budget)),
                             shard_size=shard_size, prompt=prompt, columns=_columns(column), split=split,
                             strict=strict, as_json=as_json, refused={"--image": image, "--prompt-file": prompt_file,
                             "--target": target, "--foil": foil, "--overwrite": overwrite})
        return
    folder = OutputFolder(out, "explain", locals(), overwrite=overwrite, seeds=SEEDS, result="explanation")
    methods = check_choices(method, METHODS, "method") if method else None  # None: the defaults that fit the input
    options = method_options(methods or list(DEFAULT_METHODS), window, parse_memory_budget(memory_budget))
    explain_into(folder, image=image, prompt=read_prompt(prompt, prompt_file), model=model, methods=methods,
                 target=target, foil=foil, max_new_tokens=max_new_tokens, as_json=as_json, options=options)


#: Methods that stack rows and so take a ``memory_budget``.
BUDGETED = ("integrated_gradients", "occlusion", "rise")


def method_options(methods: list[str], window: int, budget: Optional[int]) -> dict[str, dict]:
    """Per-method keyword arguments from ``--window`` and ``--memory-budget``.

    Example:
        >>> method_options(["occlusion", "attention"], 4, None)
        {'occlusion': {'window': 4}}
    """
    options: dict[str, dict] = {}
    for name in methods:
        chosen = {"window": window} if name == "occlusion" and window != 1 else {}
        if budget is not None and name in BUDGETED:
            chosen["memory_budget"] = budget
        if chosen:
            options[name] = chosen
    return options


#: What the attribution methods seed (RISE draws its masks from a fixed seed).
SEEDS = {"rise": 0}


def explain_into(folder: OutputFolder, *, image: Optional[list[Path]], prompt: Optional[str], model: Optional[str],
                 methods: Optional[list[str]], target: Optional[str], foil: Optional[str],
                 max_new_tokens: Optional[int], as_json: bool, options: Optional[dict[str, dict]] = None) -> None:
    """The work of ``mmlens explain`` (and ``mmlens demo``): load, explain, write into ``folder``, summarise.

    ``methods`` None runs the default methods that fit the input (see :func:`mmlens.explain_batch`).
    """
    console = progress_console()
    with stdout_for_json(as_json):
        with folder:
            loaded, prompt_text, images = load_with_input(console, model, prompt, image)
            folder.set_model(loaded)
            with progress_bar(console) as bar:
                task = bar.add_task("explaining", total=len(methods or DEFAULT_METHODS))
                started: list[str] = []

                def advance(name: str) -> None:
                    bar.update(task, description=f"explaining: {name}", completed=len(started))
                    started.append(name)

                explanation = run_explain(loaded, prompt_text, images, methods=methods, answer=target, foil=foil,
                                          max_new_tokens=max_new_tokens, options=options, progress=advance)
            with console.status("writing report"):
                save_explanation(explanation, folder.path)
                write_html_report(explanation, folder.path / "report.html")
        print_summary(explanation, folder.out / "report.html")
    if as_json:
        print_json(json_summary(explanation, folder.out))


#: Methods that read where the answer is, not which answer it is: --target and --foil do not change their scores.
POSITION_ONLY = ("attention", "rollout")


def print_summary(explanation: Explanation, report: Path) -> None:
    """What was explained, and per method the image share, strongest image cell and prompt words of the first token."""
    console = result_console()
    lines = [("model", explanation.model), ("prompt", explanation.prompt), *what_was_explained(explanation)]
    for label, value in lines:
        console.print(f"[bold]{label:<7}[/bold] {escape(value)}", highlight=False)
    console.print(summary_table(explanation, report.parent))
    for line in method_notes(explanation):
        console.print(f"note: {line}", highlight=False, markup=False)
    console.print(f"report: {report}", highlight=False)


def summary_table(explanation: Explanation, out: Path) -> Table:
    """One row per method, for the first answer token; names whole at 80 columns, the legend in the caption."""
    rather = f" rather than {explanation.foil!r}" if explanation.foil is not None else ""
    question = f"why {explanation.answer_tokens[0]!r}{rather}?"
    count = len(explanation.answer_tokens)
    if count > 1:  # the table shows the first token only; say so, and where the others are
        question += f" (token 1 of {count}; figures for all in {out})"
    table = Table(title=question, caption_justify="left", caption=f"image = image share: {IMAGE_SHARE}; "
                  "top cell: the strongest image cell (row, col); top words: nonzero scores only")
    whole_column(table, "method", explanation.methods)
    table.add_column("ms", justify="right")
    table.add_column("image", justify="right")
    table.add_column("top cell")
    table.add_column("top words")
    for method in explanation.methods:
        table.add_row(method, f"{explanation.milliseconds[method]:.0f}", *_summary(explanation, method))
    return table


def method_notes(explanation: Explanation) -> list[str]:
    """One line when a method shown ignores what was asked: the target's identity, or the foil."""
    ignoring = [m for m in explanation.methods if m in POSITION_ONLY]
    asked = [flag for flag, given in (("--foil", explanation.foil is not None),
                                      ("--target", explanation.teacher_forced)) if given]
    if not ignoring or not asked:
        return []
    one = len(ignoring) == 1
    return [f"{', '.join(ignoring)} {'ignores' if one else 'ignore'} {' and '.join(asked)}: "
            f"{'it reads' if one else 'they read'} where the answer is, not which word it is"]


def json_summary(explanation: Explanation, out: Path) -> dict:
    """What ``--json`` prints: where the results are, the answer, and per method what the table shows."""
    methods = {}
    for method in explanation.methods:
        share, cell, words = _facts(explanation, method)
        methods[method] = {"milliseconds": round(explanation.milliseconds[method], 3), "image_share": share,
                           "top_image_cell": cell, "top_words": words}
    return {"out": str(out), "report": str(out / "report.html"), "model": explanation.model,
            "prompt": explanation.prompt, "answer": explanation.answer, "answer_tokens": explanation.answer_tokens,
            "methods": methods}


def _summary(explanation: Explanation, method: str) -> tuple[str, str, str]:
    share, cell, words = _facts(explanation, method)
    return (("—" if share is None else f"{share:.0%}"), ("—" if cell is None else f"{cell[0]}, {cell[1]}"),
            " ".join(words) or "—")


def _facts(explanation: Explanation, method: str) -> tuple[float | None, list[int] | None, list[str]]:
    """The first token's image share, strongest image cell (row, col) and three strongest prompt words.

    Words that score 0 (methods that only score the image) and whitespace tokens (newlines) are no words.
    """
    import numpy as np

    share = explanation.image_share(method, 0)
    cell = None
    if explanation.layout.images[0]:
        grid = explanation.image_grid(method, 0)
        if np.isfinite(grid).any():
            cell = [int(v) for v in np.unravel_index(np.nanargmax(grid), grid.shape)]
    scored = [(word, score) for word, score in explanation.prompt_scores(method, 0)
              if word.strip() and np.isfinite(score) and score != 0.0]
    words = sorted(scored, key=lambda pair: -pair[1])[:3]
    return (float(share) if np.isfinite(share) else None), cell, [word for word, _ in words]
