"""``mmlens lens``: what hidden states mean layer by layer, and where the modalities meet.

Writes ``lens.json``, ``lens.html`` (a self-contained section) and PNG figures
into ``--out``: top-1 words over the image per layer, the answer's rank and
probability per layer, attention flow per modality and head, and attention
knockout per layer window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from mmlens.cli.inside_options import AnswerOption, ObjectBoxOption, object_box
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
from mmlens.cli.terminal import progress_bar
from mmlens.causal.groups import object_positions
from mmlens.layout import Modality
from mmlens.lens import AttentionFlow, Knockout, LogitLens, attention_flow, knockout, logit_lens
from mmlens.report.figures import display_token
from mmlens.report.inside import answer_emergence_figure, flow_figures, knockout_figure, lens_word_grid_figure
from mmlens.report.files import save_lens
from mmlens.report.inside_html import section_html, write_sections
from mmlens.report.output import OutputFolder


def lens(
    image: Optional[list[Path]] = ImageOption,
    prompt: Optional[str] = PromptOption,
    prompt_file: Optional[Path] = PromptFileOption,
    model: Optional[str] = ModelOption,
    answer: Optional[str] = AnswerOption,
    top_k: int = typer.Option(5, "--top-k", help="Tokens kept per layer and position."),
    window: int = typer.Option(1, "--window", help="Layers blocked together in attention knockout."),
    box: Optional[str] = ObjectBoxOption,
    memory_budget: Optional[str] = MemoryBudgetOption,
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Logit lens on every layer and position, attention flow and knockout; write lens.json, lens.html and PNGs."""
    folder = OutputFolder(out, "lens", locals(), overwrite=overwrite, result="lens")
    budget = parse_memory_budget(memory_budget)
    console = Console(stderr=True)
    prompt = read_prompt(prompt, prompt_file)
    with stdout_for_json(as_json):
        with folder:
            loaded, prompt_text, images = load_with_input(console, model, prompt, image)
            folder.set_model(loaded)
            batch = loaded.prepare(prompt_text, images)
            region = object_box(box, image, prompt, loaded.name, first_image=images[0] if images else None)
            with progress_bar(console) as bar:
                task = bar.add_task("logit lens", total=3)
                result = logit_lens(loaded, batch, answer=answer, top_k=top_k)
                bar.update(task, advance=1, description="attention flow")
                flow = attention_flow(loaded, batch)
                bar.update(task, advance=1, description="attention knockout")
                groups = {"image": batch.layout.mask(Modality.IMAGE)}
                if region is not None and images:
                    objects = torch.zeros_like(groups["image"])
                    objects[0, object_positions(batch.layout, 0, region)] = True
                    groups["object image"] = objects
                blocked = (knockout(loaded, batch, groups, window=window, answer=result.answer_ids,
                                    memory_budget=budget) if images else None)
                bar.update(task, advance=1)
            with console.status("writing figures and report"):
                figures = {"lens_emergence": answer_emergence_figure(result), **flow_figures(flow)}
                if images:
                    figures["lens_words"] = lens_word_grid_figure(result, images[0])
                if blocked is not None:
                    figures["knockout"] = knockout_figure(blocked)
                for name, figure in figures.items():
                    figure.savefig(folder.path / f"{name}.png", format="png")
                save_lens(result, flow, blocked, folder.path)
                write_sections([lens_section(result, flow, blocked, figures)], folder.path / "lens.html",
                               title=f"mmlens lens · {loaded.name}")
        print_summary(result, flow, folder.out / "lens.html")
    if as_json:
        print_json(json_summary(result, flow, folder.out))


def lens_section(result: LogitLens, flow: AttentionFlow, blocked: Knockout | None, figures: dict[str, Figure]) -> str:
    """The HTML section of one ``mmlens lens`` run."""
    answer = display_token(result.vocabulary[int(result.answer_ids[0])]).strip()
    facts = {"model": result.model, "prompt": result.prompts[0], "answer followed": answer,
             "emerges at": result.layer_names[result.emergence_layer(0)] if result.emergence_layer(0) is not None
             else "never"}
    if blocked is not None:
        facts["knockout baseline P(answer)"] = f"{float(blocked.baseline[0]):.3f}"
    captions = {"lens_words": "What does each image patch mean at each layer? "
                              "Top-1 word of the unembedded hidden state.",
                "lens_emergence": "When does the answer emerge? Its rank and probability at the last position.",
                "flow_modalities": "Attention from the answer position to image, text and special tokens "
                                   "(mean over heads).",
                "flow_heads": "Share of attention on image tokens, per layer and head.",
                "knockout": "Change of P(answer) when the answer position may not attend to these tokens."}
    shown = [(captions[name], figures[name]) for name in captions if name in figures]
    table = {"title": "per layer, at the answer position", "columns": ["layer", "top-1", "p", "entropy",
                                                                       "answer rank", "P(answer)"],
             "rows": _rows(result)}
    return section_html("logit lens and attention flow", facts, shown, [table])


def _rows(result: LogitLens) -> list[list[str]]:
    rows = []
    for layer, name in enumerate(result.layer_names):
        top = display_token(result.vocabulary[int(result.top_ids[layer, 0, result.position, 0])]).strip()
        rows.append([name, top, f"{float(result.top_probs[layer, 0, result.position, 0]):.3f}",
                     f"{float(result.entropy[layer, 0, result.position]):.2f}", str(int(result.answer_rank[layer, 0])),
                     f"{float(result.answer_prob[layer, 0]):.3f}"])
    return rows


def json_summary(result: LogitLens, flow: AttentionFlow, out: Path) -> dict:
    """What ``--json`` prints: where the results are, and per layer what the table shows."""
    shares = flow.by_layer(0)[:, 0].tolist()
    columns = ("layer", "top1", "p", "entropy", "answer_rank", "answer_prob")
    layers = []
    for layer, row in enumerate(_rows(result)):
        entry = dict(zip(columns, row))
        for key in ("p", "entropy", "answer_prob"):
            entry[key] = float(entry[key])
        entry["answer_rank"] = int(entry["answer_rank"])
        entry["attention_on_image"] = None if layer == 0 else round(shares[layer - 1], 6)
        layers.append(entry)
    emergence = result.emergence_layer(0)
    return {"out": str(out), "report": str(out / "lens.html"), "model": result.model, "prompt": result.prompts[0],
            "answer": display_token(result.vocabulary[int(result.answer_ids[0])]).strip(),
            "emerges_at": result.layer_names[emergence] if emergence is not None else None, "layers": layers}


def print_summary(result: LogitLens, flow: AttentionFlow, report: Path) -> None:
    """Per layer: top-1 token, entropy, the answer's rank and probability, attention on the image."""
    console = Console()
    answer = display_token(result.vocabulary[int(result.answer_ids[0])]).strip()
    console.print(f"[bold]model[/bold]   {result.model}")
    console.print(f"[bold]prompt[/bold]  {result.prompts[0]}")
    console.print(f"[bold]answer[/bold]  {answer}")
    table = Table(title="logit lens at the answer position")
    for column in ("layer", "top-1", "p", "entropy", "answer rank", "P(answer)", "attn on image"):
        table.add_column(column)
    shares = flow.by_layer(0)[:, 0].tolist()
    for layer, row in enumerate(_rows(result)):
        share = "-" if layer == 0 else f"{shares[layer - 1]:.0%}"  # row 0 is the decoder input
        table.add_row(*row, share)
    console.print(table)
    console.print(f"report: {report}")
