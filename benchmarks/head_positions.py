"""Decoder heads of ``shapes-llava`` knocked out at chosen positions only: image tokens, text, the last position.

    nice -n 10 python benchmarks/head_positions.py --n 64 --out out/bench/head_positions.json

For colour and shape questions about the same held-out scenes (as
``benchmarks/vision_heads.py``), each of the decoder's 4 x 4 heads is replaced
by its mean (over the batch's real tokens) everywhere, only at the image
tokens, only at the text tokens, or only at the last position; the figure is
the drop of the answer logit, pooled over samples. Positions split the
sequence, so the three restricted grids show where each head's effect enters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402
from heads import top  # noqa: E402
from vision_heads import TYPES, knockout, prepared  # noqa: E402

PLACES = ("all", "image", "text", "last")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava")
    parser.add_argument("--n", type=int, default=64, help="held-out samples per question type")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out/bench/head_positions.json"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mmlens
    from mmlens.data.shapes import make_sample

    model = mmlens.load(args.model)
    results: dict = {"model": args.model, "n": args.n, "batch": args.batch, "threads": args.threads}
    for kind in TYPES:
        batches = prepared(model, [make_sample("test", i, kind) for i in range(args.n)], args.batch)
        results[kind] = {}
        for where in PLACES:
            grid = knockout(model, batches, "mean", [where] * len(batches), tower="lm")
            results[kind][where] = grid.round(4).tolist()
            print(f"{kind:6s} at {where:5s}: top {top(grid)}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    emit(results, args.json)


if __name__ == "__main__":
    main()
