"""``mmlens explain``: why did the model answer this? Heatmaps, word scores, an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from mmlens.attribution.api import DEFAULT_METHODS, METHODS, explain as run_explain
from mmlens.attribution.explanation import IMAGE_SHARE, Explanation
from mmlens.cli.options import ImageOption, ModelOption, OutOption, PromptOption, check_choices
from mmlens.cli.samples import load_with_input
from mmlens.report.files import save_explanation
from mmlens.report.html import what_was_explained, write_html_report


def explain(
    image: Optional[list[Path]] = ImageOption,
    prompt: Optional[str] = PromptOption,
    model: Optional[str] = ModelOption,
    method: Optional[list[str]] = typer.Option(None, "--method", help=f"Repeatable; one of {', '.join(METHODS)}."),
    target: Optional[str] = typer.Option(None, "--target", help="Explain this answer (teacher-forced) instead of the model's own."),
    foil: Optional[str] = typer.Option(None, "--foil", help="Contrast the target against this answer."),
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", help="Most tokens of the generated answer to explain (default: the model's "
        "answer length, one word for shapes-llava, else 8); generation also stops at the end token."),
    out: Path = OutOption,
) -> None:
    """Explain each answer token with several attribution methods; write report.html, explanation.json and PNGs."""
    methods = check_choices(list(method or DEFAULT_METHODS), METHODS, "method")
    console = Console(stderr=True)
    loaded, prompt_text, images = load_with_input(console, model, prompt, image)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("explaining", total=len(methods))

        def advance(name: str) -> None:
            bar.update(task, description=f"explaining: {name}", completed=methods.index(name))

        explanation = run_explain(loaded, images, prompt_text, methods=methods, answer=target, foil=foil,
                                  max_new_tokens=max_new_tokens, progress=advance)
    with console.status("writing report"):
        save_explanation(explanation, out)
        report = write_html_report(explanation, out / "report.html")
    print_summary(explanation, report)


def print_summary(explanation: Explanation, report: Path) -> None:
    """What was explained, and per method the image share, strongest image cell and prompt words of the first token."""
    console = Console()
    lines = [("model", explanation.model), ("prompt", explanation.prompt), *what_was_explained(explanation)]
    for label, value in lines:
        console.print(f"[bold]{label:<7}[/bold] {escape(value)}", highlight=False)
    rather = f" rather than {explanation.foil!r}" if explanation.foil is not None else ""
    question = f"why {explanation.answer_tokens[0]!r}{rather}?"
    table = Table(title=question, caption=f"image share: {IMAGE_SHARE}")
    for column in ("method", "ms", "image share", "top image cell (row, col)", "top words"):
        table.add_column(column)
    for method in explanation.methods:
        table.add_row(method, f"{explanation.milliseconds[method]:.1f}", *_summary(explanation, method))
    console.print(table)
    console.print(f"report: {report}")


def _summary(explanation: Explanation, method: str) -> tuple[str, str, str]:
    import numpy as np

    share = explanation.image_share(method, 0)
    cell = "-"
    if explanation.layout.images[0]:
        grid = explanation.image_grid(method, 0)
        if np.isfinite(grid).any():
            cell = str(tuple(int(v) for v in np.unravel_index(np.nanargmax(grid), grid.shape)))
    words = sorted(explanation.prompt_scores(method, 0), key=lambda pair: -pair[1])[:3]
    return ("-" if not np.isfinite(share) else f"{share:.0%}"), cell, " ".join(word for word, _ in words)
