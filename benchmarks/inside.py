"""Inside the model: logit lens, causal tracing, injection and tracing speed on held-out shapes samples.

    python benchmarks/inside.py [--lens-samples 500] [--trace-samples 200] [--eval-samples 500] [--json]

Four checks on the default model (``mmlens.load()``):

1. **Logit lens**: among correctly answered test samples (top-1 token at the
   last position = the ground-truth answer), the share whose answer has rank 1
   at the last layer, and at each earlier layer.
2. **Causal tracing**: recovery when the object's image tokens are restored
   against the same number of random non-object image tokens, pooled over
   ``--trace-samples`` samples of the types that ask about one object
   (colour, shape, position, exist-yes); under pixel noise (3x the pixel std,
   FCCT) and under a counterfactual image (the object recoloured or removed).
3. **Injection (IRI)**: the plan comes from the traces above; lambda (a
   multiple of the published 0.26 / 0.16) is chosen on validation samples
   under noise; accuracy on test samples, clean and under noise, with and
   without injection.
4. **Speed**: full traces (3 components x layers x 6 groups) of one sample
   and of 8 samples, batched against one whole forward per condition,
   medians of interleaved repeats.

With --json the last line is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median_seconds  # noqa: E402

import mmlens  # noqa: E402
from mmlens.causal import CausalTrace, inject, noisy_pixels, patch, plan_injection, trace  # noqa: E402
from mmlens.data.shapes import QUESTION_TYPES, counterfactual, make_sample  # noqa: E402
from mmlens.lens import logit_lens  # noqa: E402

ERR = Console(stderr=True)
TRACED_TYPES = ("colour", "shape", "position", "exist")
LAMBDA_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--lens-samples", type=int, default=500)
    parser.add_argument("--trace-samples", type=int, default=200)
    parser.add_argument("--eval-samples", type=int, default=500, help="test (and validation) samples for injection")
    parser.add_argument("--noise", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = mmlens.load(args.model)
    figures = {"model": model.name, "layers": model.n_layers, "threads": args.threads}
    figures["lens"] = lens_check(model, args.lens_samples, args.batch * 8)
    traces, figures["tracing"] = tracing_check(model, args.trace_samples, args.batch, args.noise)
    figures["injection"] = injection_check(model, traces, args.eval_samples, args.noise, args.batch * 8)
    figures["identity"] = identity_check(model)
    figures["speed"] = speed_check(model, args.repeats, args.noise)
    report(figures)
    emit(figures, args.json)


def _balanced(split: str, n: int, types: tuple[str, ...] = QUESTION_TYPES, start: int = 0) -> list:
    return [make_sample(split, start + i, types[i % len(types)]) for i in range(n)]


def _answer_ids(model: mmlens.Model, samples: list) -> torch.Tensor:
    return torch.tensor([model.tokenizer(s.answer, add_special_tokens=False)["input_ids"][0] for s in samples])


def lens_check(model: mmlens.Model, n: int, batch_size: int) -> dict:
    """Rank-1 rate of the answer per layer among correctly answered samples."""
    samples = _balanced("test", n)
    ranks, correct = [], []
    for start in track(range(0, n, batch_size), description="logit lens", console=ERR):
        chunk = samples[start:start + batch_size]
        batch = model.prepare([s.prompt for s in chunk], [[s.image] for s in chunk])
        ids = _answer_ids(model, chunk)
        lens = logit_lens(model, batch, answer=ids, top_k=1)
        ranks.append(lens.answer_rank)  # (layers + 1, rows)
        correct.append(lens.top_ids[-1, :, -1, 0] == ids)
        names = lens.layer_names
    rank = torch.cat(ranks, 1)
    right = torch.cat(correct)
    rank1 = (rank[:, right] == 1).float().mean(1)
    # First layer from which the answer stays at rank 1 (per correct sample).
    stays = torch.flip(torch.cumprod(torch.flip((rank[:, right] == 1).int(), [0]), 0), [0])
    first = (len(names) - stays.sum(0)).float()
    return {"samples": n, "correct": int(right.sum()), "accuracy": round(float(right.float().mean()), 4),
            "rank1_last_layer": round(float(rank1[-1]), 4),
            "rank1_by_layer": {name: round(float(v), 4) for name, v in zip(names, rank1)},
            "median_emergence_layer": names[int(first.median())],
            "median_rank_by_layer": {name: float(rank[i].float().median()) for i, name in enumerate(names)}}


def _traced_samples(n: int) -> list:
    """``n`` test samples asking about one object: colour, shape, position, and exist questions answered yes."""
    out, index = [], 0
    while len(out) < n:
        sample = make_sample("test", index, TRACED_TYPES[index % len(TRACED_TYPES)])
        if sample.target_objects:
            out.append(sample)
        index += 1
    return out


def _counterfactual_batch(model: mmlens.Model, chunk: list) -> mmlens.Batch:
    """The same questions on images where the asked object is recoloured (colour, exist) or removed (others)."""
    kinds = ["recolour" if s.question_type in ("colour", "exist") else "remove" for s in chunk]
    images = [counterfactual(s, kind).image for s, kind in zip(chunk, kinds)]
    return model.prepare([s.prompt for s in chunk], [[image] for image in images])


def tracing_check(model: mmlens.Model, n: int, batch_size: int, noise: float) -> tuple[CausalTrace, dict]:
    """Object image tokens against same-count random non-object image tokens, pooled over ``n`` samples.

    Two corruptions: Gaussian pixel noise on the whole image (FCCT), and a
    counterfactual image that changes only the asked object.
    """
    samples = _traced_samples(n)
    starts = range(0, n, batch_size)
    noisy = CausalTrace.concat([trace(model, samples[i:i + batch_size], noise=noise, seed=i)
                                for i in track(starts, description="tracing: pixel noise", console=ERR)])
    swapped = CausalTrace.concat([trace(model, samples[i:i + batch_size], seed=i,
                                        corrupt=_counterfactual_batch(model, samples[i:i + batch_size]))
                                  for i in track(starts, description="tracing: counterfactual", console=ERR)])
    return noisy, {"samples": n, "noise": noise, "types": list(TRACED_TYPES),
                   "noise_corruption": _object_vs_control(noisy),
                   "counterfactual_corruption": _object_vs_control(swapped)}


def _object_vs_control(joined: CausalTrace) -> dict:
    """Pooled recovery rates per layer of the object, control and other image groups; their ratio."""
    g_object, g_control = joined.groups.index("object image"), joined.groups.index("control image")
    g_other = joined.groups.index("other image")
    gap = joined.p_clean - joined.p_corrupt
    informative = gap > 0.1  # rows where the corruption moves P(answer) at all
    figures: dict = {"p_clean": round(float(joined.p_clean.mean()), 4),
                     "p_corrupt": round(float(joined.p_corrupt.mean()), 4),
                     "object_tokens_mean": round(float(joined.group_sizes[:, g_object].float().mean()), 2),
                     "rows_with_gap_over_0.1": int(informative.sum())}
    for component in joined.components:
        gains = joined.p_patched[component] - joined.p_corrupt[:, None, None]  # (rows, layers, groups)
        pooled = gains.mean(0) / gap.mean()
        kept = gains[informative].mean(0) / gap[informative].mean() if informative.any() else pooled * float("nan")
        obj, ctrl = pooled[:, g_object], pooled[:, g_control]
        wins = (gains[:, :, g_object].mean(1) > gains[:, :, g_control].mean(1)).float().mean()
        figures[component] = {
            "object_rr_by_layer": [round(float(v), 4) for v in obj],
            "control_rr_by_layer": [round(float(v), 4) for v in ctrl],
            "other_rr_by_layer": [round(float(v), 4) for v in pooled[:, g_other]],
            "object_rr_mean": round(float(obj.mean()), 4),
            "control_rr_mean": round(float(ctrl.mean()), 4),
            "ratio": _ratio(obj.mean(), ctrl.mean()),
            "ratio_informative_rows": _ratio(kept[:, g_object].mean(), kept[:, g_control].mean()),
            "object_beats_control": round(float(wins), 4),
        }
    return figures


def _ratio(a: torch.Tensor, b: torch.Tensor) -> float | None:
    return round(float(a / b), 2) if float(b) != 0 and not torch.isnan(b) else None


@torch.no_grad()
def _accuracy(model: mmlens.Model, samples: list, noise: float | None, plan, batch_size: int) -> torch.Tensor:
    hits = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = model.prepare([s.prompt for s in chunk], [[s.image] for s in chunk])
        if noise is not None:
            batch, _ = noisy_pixels(batch, noise, seed=start)
        if plan is None:
            logits = model.forward(batch, use_cache=False).logits[:, -1]
        else:
            with inject(model, plan):
                logits = model.forward(batch, use_cache=False).logits[:, -1]
        hits.append(logits.argmax(-1).cpu() == _answer_ids(model, chunk))
    return torch.cat(hits)


def injection_check(model: mmlens.Model, traces: CausalTrace, n: int, noise: float, batch_size: int) -> dict:
    """IRI with the plan from the traces; lambda scale chosen on validation samples under noise."""
    plan = plan_injection(traces, sources=3, targets=10)
    validation = _balanced("val", n)
    scores = {}
    for scale in track(LAMBDA_SCALES, description="injection: choosing lambda", console=ERR):
        scores[scale] = float(_accuracy(model, validation, noise, plan.scaled(scale), batch_size).float().mean())
    best = max(scores, key=lambda s: (scores[s], -s))
    chosen = plan.scaled(best)
    test = _balanced("test", n, start=10_000)
    ERR.print("injection: test accuracy")
    clean, clean_inj = _accuracy(model, test, None, None, batch_size), _accuracy(model, test, None, chosen, batch_size)
    noisy = _accuracy(model, test, noise, None, batch_size)
    noisy_inj = _accuracy(model, test, noise, chosen, batch_size)
    return {
        "plan": plan.to_json(), "lambda_scale": best, "validation_accuracy_by_scale": scores,
        "test_samples": n,
        "clean": round(float(clean.float().mean()), 4), "clean_injected": round(float(clean_inj.float().mean()), 4),
        "noisy": round(float(noisy.float().mean()), 4), "noisy_injected": round(float(noisy_inj.float().mean()), 4),
        "wrong_fixed_under_noise": int((~noisy & noisy_inj).sum()),
        "right_broken_under_noise": int((noisy & ~noisy_inj).sum()),
        "wrong_fixed_clean": int((~clean & clean_inj).sum()), "right_broken_clean": int((clean & ~clean_inj).sum()),
    }


@torch.no_grad()
def identity_check(model: mmlens.Model) -> dict:
    """Patching a run into itself at every site and position: the largest change of any logit."""
    samples = _balanced("test", 8)
    batch = model.prepare([s.prompt for s in samples], [[s.image] for s in samples])
    expected = model.forward(batch, use_cache=False).logits
    out = patch(model, batch, batch, ["lm.L*.resid", "lm.L*.attn", "lm.L*.mlp"]).logits
    return {"max_abs_change": float((out - expected).abs().max()), "exact": bool(torch.equal(out, expected))}


def speed_check(model: mmlens.Model, repeats: int, noise: float) -> dict:
    """Full traces (every component, layer and group), batched against one whole forward per condition.

    For one sample (the FCCT setting) and for a batch of 8 samples, where the
    per-condition forwards already batch the samples.
    """
    figures: dict = {}
    for name, inputs, times in (("one_sample", make_sample("test", 0, "colour"), repeats),
                                ("eight_samples", _balanced("test", 8, TRACED_TYPES), max(1, repeats // 2))):
        batched = trace(model, inputs, noise=noise)
        single = trace(model, inputs, noise=noise, batched=False)
        same = max(float((batched.p_patched[c] - single.p_patched[c]).abs().max()) for c in batched.components)
        with torch.no_grad():
            seconds = median_seconds({"batched": lambda: trace(model, inputs, noise=noise),
                                      "per_condition": lambda: trace(model, inputs, noise=noise, batched=False)},
                                     repeats=times, warmup=1)
        figures[name] = {"conditions": sum(p.shape[1] * p.shape[2] for p in batched.p_patched.values()),
                         "batched_s": round(seconds["batched"], 4),
                         "per_condition_s": round(seconds["per_condition"], 4),
                         "speedup": round(seconds["per_condition"] / seconds["batched"], 2),
                         "max_abs_difference": same}
    return figures


def report(figures: dict) -> None:
    """Human-readable summary of the four checks."""
    console = Console()
    lens, tracing, injection, speed = figures["lens"], figures["tracing"], figures["injection"], figures["speed"]
    console.print(f"[bold]{figures['model']}[/bold] ({figures['layers']} layers, {figures['threads']} thread(s))")
    console.print(f"logit lens: {lens['correct']}/{lens['samples']} answered correctly; answer at rank 1 in the last "
                  f"layer for {lens['rank1_last_layer']:.1%} of them; by layer {lens['rank1_by_layer']}")
    for corruption in ("noise_corruption", "counterfactual_corruption"):
        for component in ("resid", "attn", "mlp"):
            row = tracing[corruption][component]
            console.print(f"tracing ({corruption.split('_')[0]}) {component}: object RR {row['object_rr_mean']:.3f} vs "
                          f"same-count control {row['control_rr_mean']:.3f} (ratio {row['ratio']}, "
                          f"{row['ratio_informative_rows']} on informative rows); object wins on "
                          f"{row['object_beats_control']:.0%} of {tracing['samples']} samples")
    console.print(f"injection (lambda x{injection['lambda_scale']}): clean {injection['clean']:.3f} -> "
                  f"{injection['clean_injected']:.3f}; noisy {injection['noisy']:.3f} -> "
                  f"{injection['noisy_injected']:.3f}")
    console.print(f"patching identity: exact={figures['identity']['exact']}")
    for name, row in speed.items():
        console.print(f"speed ({name.replace('_', ' ')}): {row['conditions']} conditions, batched "
                      f"{row['batched_s'] * 1000:.0f} ms vs one forward per condition "
                      f"{row['per_condition_s'] * 1000:.0f} ms: {row['speedup']:.1f}x")


if __name__ == "__main__":
    main()
