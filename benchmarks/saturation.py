"""Where stacking rows stops paying: time per row of a decoder pass at k = 1, 2, 4, 8 stacked rows.

    python benchmarks/saturation.py [--tokens 64,128,256,600] [--repeats 5] [--json]        # CPU, small preset
    python benchmarks/saturation.py --preset llava-1.5-7b --tokens 256,600,3000 --json      # on a GPU

This measures what ``mmlens.budget.SATURATION_TOKENS`` should be on a device:
the passes of integrated gradients (forward + backward) and of occlusion,
tracing and knockout (forward only) stack rows of a recorded decoder call
(the vision tower ran once). For each sequence length the script times one
pass of ``k`` stacked rows, for every ``k`` in turn, ``--repeats`` rounds
(interleaved, so a machine whose load drifts slows every ``k`` alike), and
reports the median time per row and its ratio to ``k = 1``. The saturation
count is the tokens per pass past which doubling the rows cuts the time per
row by less than ``--gain`` (10%). Lengths below the image's 576 tokens cut
a prefix of the recorded call (shapes, not content, set the cost).
Models come from ``benchmarks/memory.py`` (random weights, built in code).
With --json the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from presets import add_model_options, build, default_device, prepare  # noqa: E402

ROWS = (1, 2, 4, 8)


def prefix(call, length: int):
    """The recorded call cut to its first ``length`` positions (every argument with that sequence axis last)."""
    from mmlens.models.decoder import DecoderCall

    full = call.embeds.shape[1]

    def cut(value):
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[-1] == full:
            return value[..., :length]
        return value

    return DecoderCall(call.model, call.embeds[:, :length].contiguous(), {k: cut(v) for k, v in call.kwargs.items()})


def one_pass(call, rows: int, grad: bool) -> None:
    """One decoder pass of ``rows`` stacked copies, logits at the last position (as the methods run it)."""
    x = call.embeds.repeat(rows, 1, 1).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        score = call.logits(x, positions=[-1])[:, 0, 0].sum()
        if grad:
            torch.autograd.grad(score, x)
    if call.embeds.is_cuda:
        torch.cuda.synchronize()


def sweep(call, grad: bool, repeats: int) -> dict[int, list[float]]:
    """Seconds per row for each number of stacked rows, ``repeats`` interleaved rounds."""
    per_row: dict[int, list[float]] = {k: [] for k in ROWS}
    for k in ROWS:
        one_pass(call, k, grad)  # warm-up: kernels and allocations of that shape
    for _ in range(repeats):
        for k in ROWS:
            start = time.perf_counter()
            one_pass(call, k, grad)
            per_row[k].append((time.perf_counter() - start) / k)
    return per_row


def saturation(seq: int, ratios: dict[int, float], gain: float) -> int:
    """Tokens per pass past which doubling the rows saves less than ``gain`` of the time per row."""
    for k in ROWS[:-1]:
        if ratios[2 * k] > (1 - gain) * ratios[k]:
            return k * seq
    return ROWS[-1] * seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--tokens", default="64,128,256,600")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gain", type=float, default=0.10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from mmlens.models.decoder import record_decoder_call

    torch.set_num_threads(args.threads)
    device = args.device or default_device(args.preset)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    model = build(args.preset, device, args.layers, args.hidden, dtype)
    lengths = [int(t) for t in args.tokens.split(",")]
    calls = {}
    for length in lengths:
        batch = prepare(model, max(length, 600))
        call = record_decoder_call(model, batch, run_decoder=False)
        calls[length] = call if length >= call.embeds.shape[1] else prefix(call, length)
    figures = {"preset": args.preset, "device": device, "dtype": str(dtype), "threads": args.threads,
               "card": torch.cuda.get_device_name() if device.startswith("cuda") else "CPU", "rows": list(ROWS),
               "runs": []}
    for length, call in calls.items():
        seq = call.embeds.shape[1]
        for grad in (True, False):
            per_row = sweep(call, grad, args.repeats)
            ratios = {k: statistics.median([a / b for a, b in zip(per_row[k], per_row[1])]) for k in ROWS}
            run = {"tokens": seq, "mode": "forward+backward" if grad else "forward",
                   "seconds_per_row": {k: statistics.median(v) for k, v in per_row.items()},
                   "per_row_over_one": ratios, "saturation_tokens": saturation(seq, ratios, args.gain)}
            figures["runs"].append(run)
            print(f"{seq:>6} {run['mode']:<17} " + "  ".join(f"k={k}: {ratios[k]:.2f}" for k in ROWS)
                  + f"  -> saturates at {run['saturation_tokens']} tokens a pass", flush=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
