"""Where gradient x input spends its time beside a bare forward + backward, on a GPU (LLaVA-1.5-7B's config, bf16).

    python benchmarks/profile_gradients.py [--tokens 600]

Prints the best of 5 wall times of a bare forward + backward, gradient x
input and the decoder-call recording alone, then ``torch.profiler``'s kernel
table of one bare run and one gradient x input run: when their GPU time is
far below their wall time, the pass is bound by Python and kernel launches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import bare, build, prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from mmlens.attribution.gradients import gradient_x_input
    from mmlens.models.decoder import record_decoder_call
    from mmlens.readout import build_targets

    model = build("llava-1.5-7b", "cuda", None, 256, torch.bfloat16)
    batch = prepare(model, args.tokens)
    targets = build_targets(model, batch, max_new_tokens=1)
    runs = {"bare": lambda: bare(model, batch, targets), "gradient_x_input": lambda: gradient_x_input(model, targets),
            "record": lambda: record_decoder_call(model, targets.batch, run_decoder=False)}
    for run in runs.values():  # warm-up
        run()
    for name, run in runs.items():
        best = float("inf")
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        print(f"{name} {best * 1000:.1f} ms", flush=True)
    for name in ("bare", "gradient_x_input"):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            runs[name]()
            torch.cuda.synchronize()
        print(name)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
