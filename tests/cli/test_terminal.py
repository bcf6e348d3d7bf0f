"""What the terminal shows: tables legible at 80 columns, progress off a terminal, readable result lines."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from rich.console import Console

from mmlens.cli import explain, fingerprint, info, probe, sae
from mmlens.cli.options import print_json
from mmlens.cli.terminal import PlainProgress, drop_empty, progress_bar
from mmlens.sae.evaluate import MIN_GAP, undefined_recovery


def render(renderable) -> str:
    """``renderable`` as an 80-column terminal shows it."""
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(renderable)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    return text


def cells(text: str) -> list[str]:
    """Every table cell of ``text``, stripped (rows split on box lines or runs of spaces)."""
    found = []
    for line in text.splitlines():
        found += [cell.strip() for cell in line.replace("┃", "│").split("│") if cell.strip()]
    return found


# --- tables at 80 columns ---------------------------------------------------------------------------------------

def test_fingerprint_names_are_whole_and_an_empty_group_column_is_dropped():
    rows = [{"suspect": name, "group": "", "probe_set": kind, "score": -0.016, "interval": [-0.082, 0.067],
             "samples": 40, "dropped": 0}
            for name in ("shapes-llava-pruned", "shapes-llava-seed1", "tiny-llava") for kind in ("off-task", "on-task")]
    text = render(fingerprint.summary_table(rows))
    shown = cells(text)
    for name in ("shapes-llava-pruned", "shapes-llava-seed1", "tiny-llava", "-0.082–0.067"):
        assert name in shown, text
    assert "group" not in text and "…" not in text, text
    rows[0]["group"] = "derivative"
    assert "group" in render(fingerprint.summary_table(rows))


def test_probe_tasks_sites_and_headers_are_whole():
    results = [{"task": task, "kind": "regress" if task.endswith("-scalar") else "classify", "modality": "text",
                "rows": 577, "majority": None if task.endswith("-scalar") else 0.119,
                "best": {"site": "lm.L0.resid", "accuracy": -1.05, "control": -0.907, "selectivity": -0.143}}
               for task in ("patch-colour", "object-count", "object-count-scalar", "asked-row-scalar")]
    text = render(probe.summary_table(results))
    shown = " ".join(text.split())
    for word in ("patch-colour", "object-count-scalar", "asked-row-scalar", "lm.L0.resid", "tokens", "-1.05"):
        assert word in shown, text
    assert "…" not in text, text


def test_info_boxes_are_compact_and_fit():
    assert info.compact_box([42.666, 0.0, 85.333, 32.0]) == "42.7,0–85.3,32"
    summary = {"model": "tiny-idefics3", "family": "idefics3", "class": "Idefics3ForConditionalGeneration",
               "parameters": 151264, "layers": 2, "vision_layers": 2,
               "sites": ["lm.L0.resid", "lm.L0.attn_probs", "lm.embed", "projector", "lm.L0.neurons", "lm.L0.mlp"],
               "prompt": "<image> what colour is the circle ?",
               "layout": {"seq_len": 72, "tokens": {"pad": 0, "text": 10, "image": 40, "special": 22},
                          "images": [{"size": [96, 128], "views": [
                              {"kind": "tile", "grid": [2, 2], "box": [85.333, 64.0, 128.0, 96.0], "tokens": 4}]}]}}
    console = Console(width=80, record=True, file=io.StringIO())
    info._print(summary, console)
    text = console.export_text()
    assert "85.3,64–128,96" in cells(text), text
    assert "site kinds (e.g. lm.L0.resid): " in text, text  # the example never wraps in the middle
    assert "72 tokens (10 text, 40 image, 22 special)" in " ".join(text.split()), text


def _explanation(methods: dict[str, list[tuple[str, float]]], answer_tokens: list[str], foil: str | None = None):
    """A stand-in for an Explanation: what the summary table reads of one."""
    return SimpleNamespace(
        methods=list(methods), answer_tokens=answer_tokens, foil=foil, teacher_forced=False,
        milliseconds={m: 12299.6 for m in methods}, layout=SimpleNamespace(images=[[0]]),
        image_share=lambda method, target: 0.57, image_grid=lambda method, target: np.array([[0.1, 0.9], [0.2, 0.3]]),
        prompt_scores=lambda method, target: methods[method])


def test_explain_method_names_are_whole_and_zero_or_blank_words_are_not_listed():
    words = [("what", 0.2), ("\n", 0.9), ("colour", 0.0), ("circle", 0.5), (" ", 0.7)]
    zeros = [("what", 0.0), ("colour", 0.0), ("is", 0.0)]
    table = explain.summary_table(_explanation({"integrated_gradients": words, "rise": zeros}, ["purple"]),
                                  Path("out"))
    text = render(table)
    shown = cells(text)
    assert "integrated_gradients" in shown, text
    assert "circle what" in shown, text  # the newline and the space scored highest, yet are no words
    rise_row = next(line for line in text.splitlines() if "rise" in line)
    assert rise_row.rstrip(" │").endswith("—") and "what" not in rise_row, text


def test_explain_says_which_token_and_which_methods_ignore_the_foil():
    several = _explanation({"attention": [("what", 1.0)], "rise": [("what", 1.0)]}, ["blue", "circle", "."],
                           foil="red")
    title = explain.summary_table(several, Path("out/x")).title
    assert "why 'blue' rather than 'red'? (token 1 of 3; figures for all in out/x)" == title
    notes = explain.method_notes(several)
    assert len(notes) == 1 and notes[0].startswith("attention ignores --foil"), notes
    assert explain.method_notes(_explanation({"rise": []}, ["blue"], foil="red")) == []


def test_sae_eval_shows_an_undefined_recovery_as_a_dash(capsys):
    flat = {"clean_loss": 0.001, "sae_loss": 0.0011, "zero_loss": 0.0012, "recovered": float("nan"), "samples": 20}
    result = {"site": "lm.L2.resid", "reconstruction": {"all": {"tokens": 10, "fvu": 0.2, "l0": 8.0, "dead": 0,
                                                                 "dense": 0}}, "loss_recovered": {"all": flat}}
    row = next(line for line in render(sae.eval_table(result)).splitlines() if line.startswith("│ all"))
    assert "—" in row and "nan" not in row and "0.001/0.001/0.001" in row, row
    assert sae._undefined(result) == [undefined_recovery("all", flat)] and "undefined" in sae._undefined(result)[0]
    assert undefined_recovery("all", {**flat, "zero_loss": flat["clean_loss"] + 2 * MIN_GAP}) is None
    print_json(result)  # what `sae eval --json` prints: strict JSON, the undefined value null
    assert json.loads(capsys.readouterr().out)["loss_recovered"]["all"]["recovered"] is None


def test_sae_train_last_batch_is_one_readable_line():
    line = sae.last_batch({"step": 200, "loss": 0.197307, "fvu": 0.197307, "aux": 0.0, "l0": 8.0, "dead": 0.0,
                           "lr": 2e-05})
    assert line == "step 200, loss 0.197, FVU 0.197, L0 8.0, dead 0%, lr 2e-05"
    assert "{" not in line


# --- progress off a terminal ------------------------------------------------------------------------------------

def test_progress_off_a_terminal_prints_plain_lines_and_no_blank_line():
    stream = io.StringIO()
    console = Console(file=stream)
    assert isinstance(progress_bar(console), PlainProgress)
    with progress_bar(console, every=0.05) as bar:
        task = bar.add_task("train", total=200, info="")
        bar.update(task, completed=50, info="FVU 0.312")
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("train: 50/200 FVU 0.312 (") for line in lines), lines
    quiet = io.StringIO()
    with progress_bar(Console(file=quiet)) as bar:  # a run shorter than the first interval says nothing
        bar.advance(bar.add_task("scoring", total=4), 4)
    assert quiet.getvalue() == ""


def test_drop_empty_keeps_columns_with_a_value():
    assert drop_empty(["a", "b"], [["1", ""], ["2", " "]]) == (["a"], [["1"], ["2"]])
    assert drop_empty(["a"], []) == (["a"], [])


# --- help texts ---------------------------------------------------------------------------------------------------

def test_help_texts_say_everything(capsys):
    from mmlens.cli.main import main

    def help_of(*args: str) -> str:
        assert main([*args, "--help"]) == 0
        return " ".join(capsys.readouterr().out.replace("│", " ").split())  # the help box wraps lines

    assert "needs mmlens[ray]" in help_of("harvest")
    assert "another-way, few-shot, steering, noise" in help_of("audit", "unlearning")
    assert "dashboard" in help_of("sae").split("Commands")[0]
    assert "docs/zoo.md" in help_of("info")
