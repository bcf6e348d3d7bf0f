"""Every method on the shipped model in half precision against fp32: rank agreement and IG completeness.

    python benchmarks/half_precision.py [--dtype bfloat16] [--samples 4] [--json]

Attribution methods: Spearman correlation of the half-precision heatmap with
the fp32 one over the image tokens, per sample (the table shows the minimum
and the mean). Integrated gradients: the completeness error in half
precision. Lens, causal and neuron methods: the main output of each, compared
as rank agreement (Spearman) or as the largest absolute difference of a
probability. With --json the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
from mmlens.attribution.api import METHODS  # noqa: E402
from mmlens.causal import inject, patch, plan_injection, trace  # noqa: E402
from mmlens.data.shapes import make_dataset, make_sample  # noqa: E402
from mmlens.layout import Modality  # noqa: E402
from mmlens.lens import attention_flow, knockout, logit_lens  # noqa: E402
from mmlens.metrics import deletion_insertion  # noqa: E402
from mmlens.neurons import domain_scores, modality_scores  # noqa: E402
from mmlens.readout import build_targets  # noqa: E402

# Options that keep the comparison quick: fewer steps / masks than the defaults, same for both dtypes.
OPTIONS = {"integrated_gradients": {"steps": 32}}
# Outputs compared by rank agreement; the others (probabilities, attention fractions) by their largest difference.
RANKED = ("miner scores", "domain entropy", "logit_lens entropy", "patching logits", "injection logits")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two flat tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    a, b = a.double().flatten().numpy(), b.double().flatten().numpy()
    if a.std() == 0 and b.std() == 0:
        return 1.0
    return float(spearmanr(a, b).statistic)


def _row(measure: str, values: list[float]) -> dict:
    return {"measure": measure, "min": min(values), "mean": sum(values) / len(values), "max": max(values),
            "values": values}


def attribution_figures(full: mmlens.Model, half: mmlens.Model, samples: list, methods=None) -> dict[str, dict]:
    """Per attribution method: Spearman over each row's image tokens, half against fp32; IG completeness in half."""
    answers = [s.answer for s in samples]
    figures = {}
    targets = {}
    for model in (full, half):
        batch = model.prepare([s.prompt for s in samples], [[s.image] for s in samples])
        targets[model] = build_targets(model, batch, answer=answers)
    image = targets[full].batch.layout.mask(Modality.IMAGE)
    for name in methods or METHODS:
        options = OPTIONS.get(name, {})
        a = METHODS[name](full, targets[full], **options)
        b = METHODS[name](half, targets[half], **options)
        figures[name] = _row("spearman", [spearman(a.scores[r, 0][image[r]], b.scores[r, 0][image[r]])
                                          for r in range(len(samples))])
        if name == "integrated_gradients":
            figures["integrated_gradients completeness"] = _row(
                "completeness error", b.extras["completeness_error"][:, 0].tolist())
            figures["deletion/insertion AUC"] = _faithfulness(full, half, targets, a.scores)
        if name == "occlusion":  # by default a half decoder computes in fp32; in its own dtype patches rank by rounding
            own = METHODS[name](half, targets[half], precision="model", **options)
            figures["occlusion in the model's dtype"] = _row(
                "spearman", [spearman(a.scores[r, 0][image[r]], own.scores[r, 0][image[r]]) for r in range(len(samples))])
            figures["occlusion in the model's dtype |drop difference|"] = _row(
                "max |difference|", [float((a.scores[r, 0] - own.scores[r, 0]).abs().max()) for r in range(len(samples))])
    return figures


def _faithfulness(full, half, targets, scores: torch.Tensor) -> dict:
    """Deletion and insertion AUCs from the same (fp32 IG) scores: the largest absolute difference."""
    gaps = []
    for r in range(scores.shape[0]):
        one = deletion_insertion(full, targets[full], scores[r, 0], row=r, steps=8)
        two = deletion_insertion(half, targets[half], scores[r, 0], row=r, steps=8)
        gaps.append(max(abs(one.deletion_auc - two.deletion_auc), abs(one.insertion_auc - two.insertion_auc)))
    return _row("AUC |difference|", gaps)


def inside_figures(full: mmlens.Model, half: mmlens.Model, samples: list) -> dict[str, dict]:
    """Lens, causal and neuron methods: the main output of each, half against fp32."""
    out: dict[str, list[float]] = {}
    measures: dict[str, str] = {}
    runs = {}
    for model in (full, half):
        batch = model.prepare([s.prompt for s in samples], [[s.image] for s in samples])
        answer = [s.answer for s in samples]
        groups = {"image": batch.layout.mask(Modality.IMAGE)}
        lens = logit_lens(model, batch, answer=answer)
        flow = attention_flow(model, batch)
        ko = knockout(model, batch, groups, answer=answer)
        traced = trace(model, samples, answer=answer, components=["resid", "attn", "mlp"])
        corrupted = model.prepare([s.prompt for s in samples[::-1]], [[s.image] for s in samples[::-1]])
        patched = patch(model, batch, corrupted, "lm.L*.resid", positions=[-1]).logits[:, -1].float()
        plan = plan_injection(traced, sources=1, targets=2)
        with inject(model, plan):
            injected = model.forward(batch, use_cache=False).logits[:, -1].float()
        neurons = make_dataset("val", len(samples))
        miner = modality_scores(model, {"a": neurons, "b": make_dataset("test", len(samples))}, progress=False)
        domain = domain_scores(model, {"a": neurons, "b": make_dataset("test", len(samples))}, towers=("lm",),
                               progress=False)
        runs[model] = {
            "logit_lens P(answer)": lens.answer_prob,
            "logit_lens entropy": lens.entropy,
            "attention_flow": flow.fractions,
            "knockout P(answer)": ko.probability,
            "trace P(answer)": torch.stack([traced.p_patched[c] for c in traced.components]),
            "patching logits": patched,
            "injection logits": injected,
            "miner scores": miner.combined(),
            "domain entropy": domain.entropy(domain.sites[0]),
        }
    for name in runs[full]:
        a, b = runs[full][name].detach().float().cpu(), runs[half][name].detach().float().cpu()
        if name in RANKED:
            measures[name], out[name] = "spearman", [spearman(a, b)]
        else:
            measures[name], out[name] = "max |difference|", [float((a - b).abs().max())]
    return {name: _row(measures[name], values) for name, values in out.items()}


def compare_models(name: str | None, dtype: torch.dtype, count: int, methods: list[str] | None = None) -> dict:
    """Figures for ``count`` shapes test samples: the model in fp32 and in ``dtype``; ``methods`` limits them to those heatmaps."""
    full = mmlens.load(name, dtype=torch.float32)
    half = mmlens.load(name, dtype=dtype)
    samples = [make_sample("test", i, ("colour", "shape")[i % 2]) for i in range(count)]
    figures = attribution_figures(full, half, samples, methods)
    if not methods:
        figures.update(inside_figures(full, half, samples))
    return {"model": full.name, "dtype": str(dtype).replace("torch.", ""), "samples": count, "methods": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=None, help="comma-separated heatmap methods only (default: everything)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",") if args.methods else None
    figures = compare_models(args.model, getattr(torch, args.dtype), args.samples, methods)
    table = Table("method", "measure", "min", "mean", "max", title=f"{args.dtype} against float32, {figures['model']}")
    for name, row in figures["methods"].items():
        table.add_row(name, row["measure"], f"{row['min']:.4f}", f"{row['mean']:.4f}", f"{row['max']:.4f}")
    Console().print(table)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
