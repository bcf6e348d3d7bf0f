"""Cost of BYE backdoor scoring against a bare forward over the same data, and against ``output_attentions=True``.

    python benchmarks/audit.py [--tokens 600,3000] [--n 8] [--json]          # CPU default, random weights
    python benchmarks/audit.py --device cuda --preset llava-1.5-7b --json      # LLaVA-1.5-7B's config, bf16, batch 1

Issue 18's goal: scoring (:func:`mmlens.audit.backdoor.attention_entropies`,
which computes only the last prompt row of each layer's attention) costs at
most 1.3x a bare forward over the same samples, time and peak memory. Modes,
each in a fresh subprocess over the same ``--n`` samples in batches of
``--batch-size``:

- ``bare``: ``model.prepare`` + one forward, logits at the last position only
  (what scoring runs, without reading attention);
- ``score``: BYE's scoring, head mean (the published unit);
- ``score-heads``: the same keeping every head's entropy (``--units heads``);
- ``attentions``: the same entropies from ``output_attentions=True`` (eager
  attention everywhere, every layer's full ``(heads, seq, seq)`` map), what
  scoring avoids.

Models and prompts come from ``benchmarks/memory.py`` (random-weight LLaVA-1.5
geometry, 576 image tokens; a longer prompt for ~3,000 tokens). Peak memory
is, as in ``memory.py``, that of the first run in a fresh process after a
warm-up bare batch: ``torch.cuda.max_memory_allocated`` on a GPU and the
growth of ``VmHWM`` over the resident set before the run on the CPU; the
ratio is over the ``bare`` process's peak. Time: the same process then runs
``--repeats`` rounds of one bare run and one of the mode, in turn (a loaded
machine slows both alike); the time ratio is the median of the rounds'
ratios (``bare`` against itself shows the noise). The entropies of ``score``
and ``attentions`` are compared (largest difference). With --json the last
line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from memory import run_child, run_measuring_peak  # noqa: E402
from presets import WORDS, add_model_options, build, default_device, prepare  # noqa: E402

MODES = ["score", "score-heads", "attentions"]
GOAL = 1.3  # issue 18: time and peak memory of scoring over a bare forward


def samples(model, tokens: int, n: int) -> list:
    """``n`` samples whose prompt and image are :func:`memory.prepare`'s (checked token for token)."""
    import numpy as np
    from PIL import Image

    from mmlens.data.sample import Sample

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (336, 336, 3), dtype=np.uint8))
    text = " ".join(WORDS[i % len(WORDS)] for i in range(max(8, tokens - 576 - 12)))
    prompt = f"USER: <image>\n{text} ASSISTANT:"
    if not torch.equal(model.prepare(prompt, [image]).input_ids, prepare(model, tokens).input_ids):
        raise SystemExit("the samples' prompt no longer matches memory.prepare's")
    return [Sample(f"s{i}", image, prompt, None, {}) for i in range(n)]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.float() / p.float().sum(-1, keepdim=True)
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def runner(mode: str, model, rows: list, batch_size: int):
    """A function that runs ``mode`` once over ``rows``; it returns the ``(n, layers)`` entropies (or None)."""
    from mmlens.audit.backdoor import attention_entropies
    from mmlens.models.runtime import last_logits_only
    from mmlens.models.runtime.implementation import attention_implementation

    keep = last_logits_only(model.hf)

    def batches():
        for k in range(0, len(rows), batch_size):
            chunk = rows[k:k + batch_size]
            yield model.prepare([s.prompt for s in chunk], [[s.image] for s in chunk])

    def bare():
        with torch.no_grad():
            for batch in batches():
                model.forward(batch, use_cache=False, **keep)

    def attentions():  # what scoring would cost through transformers' own switch
        out = []
        with torch.no_grad(), attention_implementation(model.hf, "eager"):
            for batch in batches():
                maps = model.forward(batch, use_cache=False, output_attentions=True, **keep).attentions
                where = batch.layout.image_positions(0).to(maps[0].device)  # every row holds the same prompt
                out.append(torch.stack([_entropy(m[:, :, -1][..., where].mean(1)) for m in maps], 1).cpu())
                del maps
        return torch.cat(out).numpy()

    if mode == "bare":
        return bare
    if mode == "attentions":
        return attentions
    if mode in ("score", "score-heads"):
        return lambda: attention_entropies(model, rows, batch_size=batch_size, per_head=mode == "score-heads").layers
    raise SystemExit(f"unknown mode {mode}")


def measure(args) -> dict:
    """Build and warm up; run ``mode`` once for its peak memory, then time it against bare runs in this process.

    The peak is the first run's (the process fresh but for one warm-up bare
    batch). Time: ``repeats`` rounds of one bare run and one run of ``mode``,
    in turn, so that a machine whose load drifts slows both alike; the
    median of the per-round ratios is the time ratio.
    """
    torch.set_num_threads(args.threads)
    model = build(args.preset, args.device, args.layers, args.hidden, getattr(torch, args.dtype))
    rows = samples(model, args.tokens, args.n)
    function, bare = runner(args.child, model, rows, args.batch_size), runner("bare", model, rows, args.batch_size)
    runner("bare", model, rows[:args.batch_size], args.batch_size)()  # one-time costs before the measurement
    cuda = args.device.startswith("cuda")
    entropies, _, peak = run_measuring_peak(function, cuda)
    times: dict[str, list[float]] = {"bare": [], "mode": []}
    for _ in range(args.repeats):
        for key, run in (("bare", bare), ("mode", function)):
            start = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - start)
    tokens = int(prepare(model, args.tokens).input_ids.shape[1])
    return {"mode": args.child, "tokens": tokens, "samples": args.n, "peak_bytes": int(max(peak, 0)),
            "seconds": statistics.median(times["mode"]), "bare_seconds": statistics.median(times["bare"]),
            "time_ratio": statistics.median(m / b for m, b in zip(times["mode"], times["bare"])),
            "entropies": None if entropies is None else [[round(float(v), 6) for v in r] for r in entropies]}


def child(args, mode: str, tokens: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--tokens", str(tokens), "--preset", args.preset,
               "--device", args.device, "--dtype", args.dtype, "--hidden", str(args.hidden), "--n", str(args.n),
               "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    if args.layers is not None:
        command += ["--layers", str(args.layers)]
    return run_child(command, {"mode": mode, "tokens": tokens})


def compare(base: dict, result: dict, score: dict | None) -> dict:
    """Peak memory over the bare process's (the time ratio is the child's own); for ``attentions``, the largest
    entropy difference from ``score``."""
    if "error" in result or "error" in base:
        return result
    result["peak_ratio"] = result["peak_bytes"] / max(1, base["peak_bytes"])
    if result["mode"].startswith("score"):
        result["meets_goal"] = result["peak_ratio"] <= GOAL and result["time_ratio"] <= GOAL
    if result["mode"] == "attentions" and score and score.get("entropies"):
        result["max_entropy_diff_vs_score"] = max(abs(a - b) for ra, rb in zip(result["entropies"], score["entropies"])
                                                  for a, b in zip(ra, rb))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--tokens", default="600,3000", help="approximate sequence lengths")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--n", type=int, default=8, help="samples scored per run")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per forward: 4 (small) or 1 (7B: every layer's full maps at 3,000 tokens "
                             "take 18 GB a sample in bf16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of bare and the mode per process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = args.device or default_device(args.preset)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.batch_size = args.batch_size or (1 if args.preset.endswith("-7b") else 4)
    if args.child:
        args.tokens = int(args.tokens)
        print(json.dumps(measure(args)))
        return
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    figures = {"preset": args.preset, "device": args.device, "card": card, "dtype": args.dtype, "layers": args.layers,
               "threads": args.threads, "n": args.n, "batch_size": args.batch_size, "repeats": args.repeats,
               "load_average": os.getloadavg()[0], "goal": GOAL, "runs": []}
    for tokens in [int(t) for t in args.tokens.split(",")]:
        base = child(args, "bare", tokens)
        figures["runs"].append(base)
        print(_line({**base, "peak_ratio": 1.0}), flush=True)
        score = None
        for mode in [m for m in args.modes.split(",") if m]:
            result = compare(base, child(args, mode, tokens), score)
            score = result if mode == "score" else score
            figures["runs"].append(result)
            print(_line(result), flush=True)
    for result in figures["runs"]:
        result.pop("entropies", None)
    figures["load_average_end"] = os.getloadavg()[0]
    emit(figures, args.json)


def _line(r: dict) -> str:
    if "error" in r:
        return f"{r['tokens']:>6} {r['mode']:<12} error: {r['error']}"
    extra = f"  max |entropy diff| {r['max_entropy_diff_vs_score']:.1e}" if "max_entropy_diff_vs_score" in r else ""
    goal = {True: "  goal met", False: "  goal MISSED"}.get(r.get("meets_goal"), "")
    return (f"{r['tokens']:>6} {r['mode']:<12} {r['seconds']:.3f} s ({r['time_ratio']:.2f}x bare in turn)  "
            f"peak {r['peak_bytes'] / 2**20:.0f} MB ({r.get('peak_ratio', 0):.2f}x bare){goal}{extra}")


if __name__ == "__main__":
    main()
