"""Circuit checks on ``shapes-llava`` (docs/circuits.md has the figures).

    nice -n 10 python benchmarks/circuits.py --n 40 --eap-n 32 --out out/bench/circuits.json
    nice -n 10 python benchmarks/circuits.py --n 40 --no-eap --norms marginal --split val   # choose on val

1. CD-T against exhaustive path patching from the same source (the asked
   object's image tokens, replaced by the mean image-token embedding), per head
   and MLP, on held-out samples of four question types: Spearman per sample
   (total and direct CD-T shares), its mean with a bootstrap 95% interval over
   samples, and the median time of each method per sample (interleaved repeats).
2. Edge attribution patching on colour questions against their recoloured
   counterfactual: the curve of edges kept (top by |score|, scores summed over
   the samples) against the share of the clean-corrupt gap recovered, with the
   other edges mean-ablated (mean over the clean samples, per position) and,
   for comparison, corrupt-ablated. Writes the curve and the circuit figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, median_seconds  # noqa: E402

TYPES = ("colour", "shape", "exist", "position")
HOOK_CHECKS = 4  # samples whose path patching is redone on the model itself through head and MLP sites
MOVED = 1.0  # logits: the source "matters" when replacing it moves the answer logit at least this much


def bootstrap(values: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` over resampled samples."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def hooks_path_patching(model, graph, batch, source: list[int]) -> torch.Tensor:
    """Path patching on the model itself through mmlens' sites (``lm.L{i}.head{j}``, ``lm.L{i}.mlp``), not the graph."""
    from mmlens.circuits.cdt import reference_embeds
    from mmlens.hooks import capture, intervene
    from mmlens.models.decoder import record_decoder_call

    call = record_decoder_call(model, batch).row(0)
    replaced = call.embeds.clone()
    replaced[0, source] = reference_embeds(call, model, batch, "mean")[0, source].to(replaced.dtype)
    sites = [f"lm.L{i}.head{j}" if j < graph.n_heads else f"lm.L{i}.mlp"
             for i in range(graph.n_layers) for j in range(graph.n_heads + 1)]
    with torch.no_grad():
        with capture(model, sites) as captured:
            call.logits(replaced)
        values = {site: captured[site].clone() for site in sites}
        clean = call.logits(call.embeds)[0, -1]
        answer = int(clean.argmax())
        effects = []
        for site in sites:
            with intervene(model, {site: lambda value, site=site: values[site]}):
                effects.append(float(clean[answer] - call.logits(call.embeds)[0, -1, answer]))
    return torch.tensor(effects)


def cdt_check(model, graph, n: int, timing: int, reference: str = "mean", activation: str = "marginal",
              norms: str = "frozen", split: str = "test", rest: str = "propagated") -> dict:
    from mmlens.causal import object_positions
    from mmlens.circuits import decompose, path_patch
    from mmlens.data.shapes import make_dataset

    per_type = -(-n // len(TYPES))
    samples = [s for t in TYPES for s in [x for x in make_dataset(split, 4 * per_type, question_type=t)
                                          if x.target_objects][:per_type]][:n]
    rows, pooled = [], ([], [])
    for s in samples:
        batch = model.prepare(s.prompt, [s.image])
        source = sorted({p for i in s.target_objects for p in object_positions(batch.layout, 0, s.objects[i].mask)})
        cd = decompose(model, batch, source, reference=reference, activation=activation, norms=norms, rest=rest,
                       graph=graph)
        pp = path_patch(model, batch, source, reference=reference, graph=graph)
        linear = path_patch(model, batch, source, reference=reference, frozen=True, graph=graph)
        probs = path_patch(model, batch, source, reference=reference, frozen="probs", graph=graph)
        scales = path_patch(model, batch, source, reference=reference, frozen="norms", graph=graph)
        rows.append({"id": s.id, "type": s.question_type, "source_tokens": len(source),
                     "spearman_total": float(spearmanr(cd.total_source, pp.effects).statistic),
                     "spearman_direct": float(spearmanr(cd.direct_source, pp.effects).statistic),
                     "spearman_abs": float(spearmanr(cd.total_source.abs(), pp.effects.abs()).statistic),
                     "spearman_frozen": float(spearmanr(cd.total_source, linear.effects).statistic),
                     "spearman_frozen_vs_patching": float(spearmanr(linear.effects, pp.effects).statistic),
                     "spearman_probs_frozen": float(spearmanr(cd.total_source, probs.effects).statistic),
                     "spearman_norms_frozen": float(spearmanr(cd.total_source, scales.effects).statistic),
                     "spearman_probs_frozen_vs_patching": float(spearmanr(probs.effects, pp.effects).statistic),
                     "source_logit": cd.source_logit, "patched_total": pp.total,
                     "top_cdt": cd.ranking(signed=True)[0][0], "top_patching": cd.components[int(pp.effects.argmax())]})
        if len(rows) <= HOOK_CHECKS:
            rows[-1]["hooks_max_abs_diff"] = float((hooks_path_patching(model, graph, batch, source)
                                                    - pp.effects).abs().max())
        pooled[0].extend(cd.total_source.tolist())
        pooled[1].extend(pp.effects.tolist())
    total = np.array([r["spearman_total"] for r in rows])
    direct = np.array([r["spearman_direct"] for r in rows])
    # Where replacing the source barely moves the target, patching effects are all near zero and their order is noise.
    moved = np.array([abs(r["patched_total"]) >= MOVED for r in rows])
    extra = {f"spearman_{key}_mean": float(np.mean([r[f"spearman_{key}"] for r in rows]))
             for key in ("abs", "frozen", "frozen_vs_patching", "probs_frozen", "norms_frozen",
                        "probs_frozen_vs_patching")}
    s = samples[0]
    batch = model.prepare(s.prompt, [s.image])
    source = object_positions(batch.layout, 0, s.objects[s.target_objects[0]].mask)
    seconds = median_seconds({"cdt": lambda: decompose(model, batch, source, reference=reference,
                                                       activation=activation, norms=norms, rest=rest,
                                                       graph=graph),
                              "path_patching": lambda: path_patch(model, batch, source, reference=reference,
                                                                  graph=graph)},
                             repeats=timing, warmup=1)
    return {"samples": len(rows), "components": len(graph.nodes) - 1,
            "spearman_total_mean": float(total.mean()), "spearman_total_ci95": bootstrap(total),
            "spearman_total_median": float(np.median(total)),
            "spearman_direct_mean": float(direct.mean()), "spearman_direct_ci95": bootstrap(direct),
            "spearman_pooled": float(spearmanr(*pooled).statistic), **extra,
            "hooks_max_abs_diff": max(r["hooks_max_abs_diff"] for r in rows if "hooks_max_abs_diff" in r),
            "moved_samples": int(moved.sum()), "spearman_total_moved_mean": float(total[moved].mean()),
            "spearman_total_moved_ci95": bootstrap(total[moved]),
            "spearman_total_by_type": {t: float(np.mean([r["spearman_total"] for r in rows if r["type"] == t]))
                                       for t in TYPES},
            "top_agree": float(np.mean([r["top_cdt"] == r["top_patching"] for r in rows])),
            "seconds_cdt": seconds["cdt"], "seconds_path_patching": seconds["path_patching"],
            "speed_ratio": seconds["path_patching"] / seconds["cdt"], "rows": rows}


def eap_check(model, graph, n: int, figures: Path | None) -> dict:
    from mmlens.circuits.eap import edge_scores, faithfulness_curve
    from mmlens.data.shapes import counterfactual, make_dataset
    from mmlens.models.decoder import record_decoder_call

    samples = make_dataset("test", n, question_type="colour")
    others = [counterfactual(s, "recolour") for s in samples]
    ids = lambda words: torch.tensor(model.tokenizer.convert_tokens_to_ids(words))  # noqa: E731
    answer, foil = ids([s.answer for s in samples]), ids([c.answer for c in others])
    clean = record_decoder_call(model, model.prepare([s.prompt for s in samples], [[s.image] for s in samples]))
    corrupt = record_decoder_call(model, model.prepare([c.prompt for c in others], [[c.image] for c in others]))
    scores = edge_scores(model, clean, corrupt, answer, foil, graph=graph)
    total = len(graph.edges)
    kept = sorted({round(total * f / 100) for f in range(0, 101, 2)} | {1, 2, 5, 10})
    with torch.no_grad():
        mean = graph.run(clean).outputs.mean(1)
        corrupt_outputs = graph.run(corrupt).outputs
    curves = {"mean": faithfulness_curve(model, clean, mean, scores, kept, answer, foil, corrupt, graph),
              "corrupt": faithfulness_curve(model, clean, corrupt_outputs, scores, kept, answer, foil, corrupt, graph)}
    result = {"samples": n, "edges": total, "eap_seconds": scores.seconds, "kept": kept,
              "top_edges": [scores.edge_names()[i] for i in scores.top(10)]}
    for name, curve in curves.items():
        result[name] = {"clean": curve.clean, "corrupt": curve.corrupt, "empty": curve.empty,
                        "recovered": [round(x, 4) for x in curve.recovered.tolist()],
                        "edges_for_80": curve.smallest(0.8), "edges_for_90": curve.smallest(0.9)}
        at_20 = max(k for k in kept if k <= 0.2 * total)
        result[name]["recovered_at_20pct"] = float(curve.recovered[kept.index(at_20)])
        result[name]["edges_at_20pct"] = at_20
    if figures is not None:
        from mmlens.report.circuit_pages import circuit_figure, curve_figure

        figures.mkdir(parents=True, exist_ok=True)
        curve_figure(curves, total).savefig(figures / "circuits_eap_curve.png")
        k = curves["mean"].smallest(0.8) or total
        circuit_figure(graph.n_layers, graph.n_heads, scores, k).savefig(figures / "circuits_eap_graph.png")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava")
    parser.add_argument("--n", type=int, default=40, help="samples for CD-T vs path patching")
    parser.add_argument("--eap-n", type=int, default=32, help="colour samples for EAP")
    parser.add_argument("--timing", type=int, default=5, help="interleaved timing repeats")
    parser.add_argument("--reference", default="mean", help="CD-T and patching reference: mean or zero")
    parser.add_argument("--activation", default="marginal", help="CD-T's MLP split: marginal or shapley")
    parser.add_argument("--norms", default="frozen", help="CD-T's RMSNorm split: frozen, marginal or shapley")
    parser.add_argument("--rest", default="propagated", help="CD-T's rest: propagated or replaced (the run with "
                        "the source replaced)")
    parser.add_argument("--split", default="test", help="shapes split of the CD-T samples: val (to choose) or test")
    parser.add_argument("--no-eap", action="store_true", help="CD-T against patching only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figures", type=Path, default=None, help="write the EAP figures here")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import mmlens
    from mmlens.circuits import DecoderGraph

    model = mmlens.load(args.model)
    graph = DecoderGraph(model)
    figures = {"model": args.model, "reference": args.reference, "activation": args.activation, "norms": args.norms,
               "rest": args.rest, "split": args.split,
               "cdt": cdt_check(model, graph, args.n, args.timing, args.reference, args.activation, args.norms,
                                args.split, args.rest),
               "eap": None if args.no_eap else eap_check(model, graph, args.eap_n, args.figures)}
    cdt, eap = figures["cdt"], figures["eap"]
    print(f"CD-T ({args.norms} norms, {args.activation} MLPs, {args.rest} rest, {args.reference} reference, "
          f"{args.split}) "
          f"vs path patching ({cdt['samples']} samples, {cdt['components']} components): Spearman total "
          f"{cdt['spearman_total_mean']:.3f} [{cdt['spearman_total_ci95'][0]:.3f}, {cdt['spearman_total_ci95'][1]:.3f}]"
          f" (median {cdt['spearman_total_median']:.3f}), direct {cdt['spearman_direct_mean']:.3f} "
          f"[{cdt['spearman_direct_ci95'][0]:.3f}, {cdt['spearman_direct_ci95'][1]:.3f}], pooled "
          f"{cdt['spearman_pooled']:.3f}, |.| {cdt['spearman_abs_mean']:.3f}, top component agrees "
          f"{cdt['top_agree']:.0%}")
    print(f"  samples where the source moves the logit >= {MOVED:g} ({cdt['moved_samples']}): "
          f"{cdt['spearman_total_moved_mean']:.3f} [{cdt['spearman_total_moved_ci95'][0]:.3f}, "
          f"{cdt['spearman_total_moved_ci95'][1]:.3f}]; by type {cdt['spearman_total_by_type']}")
    print(f"  against patching with frozen attention and norm scales {cdt['spearman_frozen_mean']:.3f}; "
          f"frozen vs real patching {cdt['spearman_frozen_vs_patching_mean']:.3f}; against patching with only the "
          f"attention frozen {cdt['spearman_probs_frozen_mean']:.3f}, only the norms {cdt['spearman_norms_frozen_mean']:.3f}; "
          f"attention-frozen vs real patching {cdt['spearman_probs_frozen_vs_patching_mean']:.3f}")
    print(f"  graph path patching vs the model's own sites (first {HOOK_CHECKS} samples): max |difference| "
          f"{cdt['hooks_max_abs_diff']:.2g} logits")
    print(f"time per sample: CD-T {cdt['seconds_cdt'] * 1000:.1f} ms, path patching "
          f"{cdt['seconds_path_patching'] * 1000:.1f} ms (ratio {cdt['speed_ratio']:.2f})")
    for name in () if eap is None else ("mean", "corrupt"):
        c = eap[name]
        print(f"EAP, {name}-ablated ({eap['samples']} samples, {eap['edges']} edges): clean {c['clean']:.2f}, "
              f"corrupt {c['corrupt']:.2f}, empty circuit {c['empty']:.2f}; 80% at {c['edges_for_80']} edges, "
              f"{c['recovered_at_20pct']:.1%} at {c['edges_at_20pct']} edges (20%)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1))
    emit({k: v for k, v in figures.items()}, args.json)


if __name__ == "__main__":
    main()
