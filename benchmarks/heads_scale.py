"""Attribution patching against exhaustive head patching at LLaVA-1.5-7B's size: the speed ratio (docs/heads.md).

    python benchmarks/heads_scale.py --json                       # on a GPU: LLaVA-1.5-7B's config, bf16
    python benchmarks/heads_scale.py --preset small --device cpu --layers 2 --json   # a quick check anywhere

The model is LLaVA-1.5-7B's exact configuration with random weights
(``benchmarks/memory.py``'s ``build``): timing needs the shapes, not the
weights, so nothing is downloaded; the grids' values mean nothing and are not
reported. One prompt of about ``--tokens`` tokens (576 image tokens). For the
language model's 32 x 32 heads (embedding noise) and the vision tower's
24 x 16 heads (pixel noise), the wall time of the exhaustive ``clean->corrupt``
patching grid and of attribution patching, each the median of ``--repeats``
runs after one warm-up, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402
from presets import build, default_device, prepare  # noqa: E402


def timed(function, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` runs after one warm-up (device work synchronised), and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llava-1.5-7b", choices=["small", "llava-1.5-7b"])
    parser.add_argument("--device", default=None, help="default: cuda for the 7B preset, else cpu")
    parser.add_argument("--layers", type=int, default=None, help="cut the decoder (and tower) to this many layers")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--towers", default="lm,vision")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = args.device or default_device(args.preset)

    from mmlens.causal.attribution_patching import attribution_patching
    from mmlens.causal.heads import patch_heads

    model = build(args.preset, device, args.layers, 256, getattr(torch, args.dtype))
    batch = prepare(model, args.tokens)
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    figures: dict = {"preset": args.preset, "device": device, "card": card, "dtype": args.dtype,
                     "tokens": int(batch.input_ids.shape[1]), "repeats": args.repeats, "towers": {}}
    for tower in args.towers.split(","):
        corrupt = "embeddings" if tower == "lm" else "noise"
        kwargs = dict(corrupt=corrupt, metric="logit", tower=tower)
        exhaustive, grid = timed(lambda: patch_heads(model, batch, **kwargs), args.repeats)
        attribution, _ = timed(lambda: attribution_patching(model, batch, **kwargs), args.repeats)
        row = {"layers": int(grid.edited.shape[1]), "heads": int(grid.edited.shape[2]), "corruption": corrupt,
               "seconds_exhaustive": round(exhaustive, 3), "seconds_attribution": round(attribution, 3),
               "speed_ratio": round(exhaustive / attribution, 1)}
        figures["towers"][tower] = row
        print(f"{tower}: {row['layers']} x {row['heads']} heads, exhaustive {exhaustive:.2f}s, attribution "
              f"{attribution:.3f}s, x{row['speed_ratio']}", flush=True)
    if device == "cuda":
        figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
