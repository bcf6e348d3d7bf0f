"""Where gradient x input spends its time beside a bare forward + backward (on a GPU: LLaVA-1.5-7B's config, bf16).

    python benchmarks/profile_gradients.py --preset llava-1.5-7b [--tokens 600] [--pairs 30] [--json]
    python benchmarks/profile_gradients.py --no-profile --pairs 5      # the small preset on the CPU

Times a bare forward + backward, gradient x input and the decoder-call
recording alone in interleaved rounds (the order reversed every other round),
and gives each one's median ratio to bare with a 95% bootstrap interval
(issue 13's goal: gradient x input's upper bound under 1.2). Then
``torch.profiler``'s kernel table of one bare run and one gradient x input
run, with each run's total GPU kernel time: when it is far below the wall
time, the pass is bound by Python and kernel launches, not by the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, paired_ratios  # noqa: E402
from memory import bare  # noqa: E402
from presets import add_model_options, build, default_device, prepare  # noqa: E402

GOAL = 1.2  # issue 13: gradient x input within 1.2x of one forward + backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--pairs", type=int, default=30, help="Interleaved rounds timed.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true", help="Skip the kernel tables.")
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    args = parser.parse_args()
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from mmlens.attribution.gradients import gradient_x_input
    from mmlens.models.decoder import record_decoder_call
    from mmlens.readout import build_targets

    device = args.device or default_device(args.preset)
    cuda = device.startswith("cuda")
    torch.set_num_threads(args.threads)
    model = build(args.preset, device, args.layers, args.hidden,
                  getattr(torch, args.dtype or ("bfloat16" if cuda else "float32")))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batch = prepare(model, args.tokens)
    targets = build_targets(model, batch, max_new_tokens=1)
    runs = {"bare": lambda: bare(model, batch, targets), "gradient_x_input": lambda: gradient_x_input(model, targets),
            "record": lambda: record_decoder_call(model, targets.batch, run_decoder=False)}

    def timed(run):
        def seconds() -> float:
            sync()
            start = time.perf_counter()
            run()
            sync()
            return time.perf_counter() - start

        return seconds

    figures = {"tokens": int(batch.input_ids.shape[1]), "card": torch.cuda.get_device_name() if cuda else "cpu",
               **paired_ratios({name: timed(run) for name, run in runs.items()}, args.pairs, args.warmup, GOAL)}
    print(json.dumps(figures), file=sys.stderr, flush=True)  # kept even if the profile below is cut off
    if not args.no_profile:
        for name in ("bare", "gradient_x_input"):
            with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
                runs[name]()
                sync()
            events = prof.key_averages()
            print(name)
            if cuda:
                kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
                figures[f"{name}_kernel_ms"] = round(sum(e.self_device_time_total for e in kernels) / 1e3, 2)
                print(f"{figures[f'{name}_kernel_ms']} ms of GPU kernels")
            sort = "cuda_time_total" if cuda else "cpu_time_total"
            print(events.table(sort_by=sort, row_limit=18, max_name_column_width=60))
    emit(figures, args.json)


if __name__ == "__main__":
    main()
