"""Attribution quality and speed on held-out shapes-world samples, every method side by side.

    python benchmarks/attribution.py [--samples 300] [--steps 32] [--types colour,shape] [--json]
    python benchmarks/attribution.py --methods grad_eclip,mmel --options '{"grad_eclip": {"spatial": "softmax"}}'
    python benchmarks/attribution.py --model shapes-llava-ft-domain --domains shapes,cells

For each method: pointing game and energy-in-box against the asked object's
ground truth, deletion and insertion AUC (teacher-forced answer probability
as image tokens are replaced by their mean embedding, most important first),
and milliseconds per explanation. A random attribution is the floor; Captum's
LayerIntegratedGradients on the same model, at the same steps and baseline, is
the reference for our integrated gradients (per-sample Spearman correlation,
and speed at batch 1 for both). The ground-truth answer is teacher-forced.
With --json the last line is the table as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.attribution.api import METHODS  # noqa: E402
from mmlens.attribution.gradients import integrated_gradients  # noqa: E402
from mmlens.readout import Targets, build_targets  # noqa: E402
from mmlens.data.shapes import make_sample  # noqa: E402
from mmlens.hooks import capture  # noqa: E402
from mmlens.metrics import deletion_insertion_batch, energy_in_box, pointing_game  # noqa: E402
from mmlens.models.decoder import record_decoder_call  # noqa: E402

DEFAULT_OPTIONS = {"rise": {"masks": 256}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--types", default="colour,shape", help="question types, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (ours and Captum's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--captum-samples", type=int, default=50, help="samples for the Captum comparison")
    parser.add_argument("--tolerance", type=int, default=0, help="pointing-game tolerance in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--options", default="{}", help="per-method keyword arguments as JSON")
    parser.add_argument("--domains", default=None,
                        help="multi-domain world test samples of these domains, interleaved (e.g. shapes,cells)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = mmlens.load(args.model)
    types = args.types.split(",")
    samples = _samples(args.samples, types, args.domains)
    methods = args.methods.split(",")
    options = {**DEFAULT_OPTIONS, "integrated_gradients": {"steps": args.steps}, **json.loads(args.options)}
    rows = {name: _empty() for name in [*methods, "random"]}
    generator = torch.Generator().manual_seed(0)
    for start in track(range(0, len(samples), args.batch), description="explaining", console=Console(stderr=True)):
        chunk = samples[start : start + args.batch]
        targets = _targets(model, chunk)
        for name in methods:
            began = time.perf_counter()
            scores = METHODS[name](model, targets, **options.get(name, {})).scores
            rows[name]["ms"].append((time.perf_counter() - began) * 1e3 / len(chunk))
            _score(model, targets, chunk, scores, rows[name], args.tolerance)
        random_scores = torch.rand(targets.batch.input_ids.shape, generator=generator)[:, None]
        _score(model, targets, chunk, random_scores, rows["random"], args.tolerance)
    captum = _captum_comparison(model, samples[: args.captum_samples], args.steps) if args.captum_samples else {}
    table = {name: _summary(row) for name, row in rows.items()}
    _print(table, captum, model.name, len(samples), types)
    emit({"model": model.name, "samples": len(samples), "types": types, "domains": args.domains, "methods": table,
          "captum": captum, "options": options}, args.json)


def _samples(count: int, types: list[str], domains: str | None) -> list:
    """Held-out test samples: the shapes world's asked types, or the multi-domain world's domains interleaved."""
    if domains:
        from mmlens.data.domains import make_sample as domain_sample

        names = domains.split(",")
        return [domain_sample(names[i % len(names)], "test", i) for i in range(count)]
    return [make_sample("test", i, types[i % len(types)]) for i in range(count)]


def _targets(model: mmlens.Model, chunk: list) -> Targets:
    batch = model.prepare([s.prompt for s in chunk], [[s.image] for s in chunk])
    return build_targets(model, batch, answer=[s.answer for s in chunk])


def _empty() -> dict[str, list[float]]:
    return {"pointing": [], "energy": [], "deletion": [], "insertion": [], "ms": []}


def _score(model, targets: Targets, chunk: list, scores: torch.Tensor, row: dict, tolerance: int) -> None:
    heatmaps = targets.batch.layout.to_heatmaps(scores[:, 0])
    for sample, maps in zip(chunk, heatmaps):
        if not sample.target_objects:
            continue  # "no" answers point at nothing
        boxes = [sample.objects[i].box for i in sample.target_objects]
        row["pointing"].append(float(pointing_game(maps[0], boxes, tolerance=tolerance)))
        row["energy"].append(energy_in_box(maps[0], mask=sample.target_mask()))
    for curves in deletion_insertion_batch(model, targets, scores, target=0):
        row["deletion"].append(curves.deletion_auc)
        row["insertion"].append(curves.insertion_auc)


def _summary(row: dict[str, list[float]]) -> dict[str, float]:
    return {key: round(float(np.nanmean(values)), 4) if values else float("nan") for key, values in row.items()}


def _captum_comparison(model: mmlens.Model, samples: list, steps: int) -> dict[str, float]:
    """Our integrated gradients against Captum's LayerIntegratedGradients, one sample at a time."""
    from captum.attr import LayerIntegratedGradients

    first_layer = model.decoder_layers[0]
    pad = model.tokenizer.pad_token_id or 0
    image_token = model.hf.config.image_token_id
    correlations, ours_ms, captum_ms, floor_ms = [], [], [], []
    for sample in track(samples, description="captum", console=Console(stderr=True)):
        targets = _targets(model, [sample])
        inputs = targets.batch.inputs
        ids, pixels = inputs["input_ids"], inputs["pixel_values"]
        # Baseline inputs: no words (pad ids) and a mid-grey image; both methods integrate from
        # the decoder input these produce, so they compute the same integral.
        base_ids = torch.where(ids == image_token, ids, torch.full_like(ids, pad))
        base_pixels = torch.zeros_like(pixels)
        with torch.no_grad(), capture(model, "lm.embed") as captured:
            model.hf(input_ids=base_ids, pixel_values=base_pixels, attention_mask=inputs["attention_mask"])
        base_embeds = captured["lm.embed"]
        position = int(targets.positions[0])
        token = int(targets.tokens[0, 0])

        def forward(input_ids, pixel_values):
            logits = model.hf(input_ids=input_ids, pixel_values=pixel_values,
                              attention_mask=inputs["attention_mask"].expand(input_ids.shape[0], -1)).logits
            return logits[:, position, token]

        lig = LayerIntegratedGradients(forward, first_layer)
        began = time.perf_counter()
        reference = lig.attribute((ids, pixels), baselines=(base_ids, base_pixels), n_steps=steps,
                                  method="gausslegendre", internal_batch_size=steps,
                                  attribute_to_layer_input=True).sum(-1)[0]
        captum_ms.append((time.perf_counter() - began) * 1e3)
        began = time.perf_counter()
        ours = integrated_gradients(model, targets, steps=steps, baseline=base_embeds,
                                    memory_budget="unlimited").scores[0, 0]  # every point in one pass
        ours_ms.append((time.perf_counter() - began) * 1e3)
        floor_ms.append(_decoder_floor_ms(model, targets, steps + 2, position, token))
        correlations.append(spearmanr(ours.numpy(), reference.detach().numpy()).statistic)
    return {
        "samples": len(samples),
        "steps": steps,
        "spearman_min": round(float(np.min(correlations)), 4),
        "spearman_median": round(float(np.median(correlations)), 4),
        "ours_ms": round(statistics.median(ours_ms), 2),
        "captum_ms": round(statistics.median(captum_ms), 2),
        "speedup": round(statistics.median(captum_ms) / statistics.median(ours_ms), 2),
        "floor_ms": round(statistics.median(floor_ms), 2),
    }


def _decoder_floor_ms(model: mmlens.Model, targets: Targets, rows: int, position: int, token: int) -> float:
    """One decoder forward and input-gradient pass over ``rows`` copies of the embeddings: the
    least work any integrated gradients at this many points can do, with no tower and no bookkeeping."""
    call = record_decoder_call(model, targets.batch)
    path = call.embeds.repeat(rows, 1, 1).requires_grad_(True)
    began = time.perf_counter()
    with torch.enable_grad():
        score = call.logits(path, positions=[position])[:, 0, token].sum()
        torch.autograd.grad(score, path)
    return (time.perf_counter() - began) * 1e3


def _print(table: dict, captum: dict, model: str, samples: int, types: list[str]) -> None:
    console = Console()
    out = Table(title=f"attribution on {samples} held-out shapes samples ({', '.join(types)}), {model}")
    for column in ("method", "pointing game", "energy in box", "deletion AUC (lower)", "insertion AUC (higher)", "ms"):
        out.add_column(column, justify="right" if column != "method" else "left")
    for name, row in table.items():
        out.add_row(name, *(f"{row[k]:.3f}" for k in ("pointing", "energy", "deletion", "insertion")), f"{row['ms']:.1f}")
    console.print(out)
    if not captum:
        return
    console.print(
        f"integrated gradients vs Captum LayerIntegratedGradients ({captum['samples']} samples, {captum['steps']} steps): "
        f"Spearman min {captum['spearman_min']:.4f}, median {captum['spearman_median']:.4f}; "
        f"{captum['ours_ms']:.1f} ms vs {captum['captum_ms']:.1f} ms ({captum['speedup']:.2f}x faster); "
        f"a bare decoder forward + input gradient over the same {captum['steps'] + 2} rows: {captum['floor_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
