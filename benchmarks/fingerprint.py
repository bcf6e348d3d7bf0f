"""CKA fingerprint cost against the cost of harvesting the hidden states it compares.

Two random-weight LLaVAs with shapes-llava's tower and a ``--layers``-deep,
``--hidden``-wide decoder (``mmlens.zoo.domains_llava.build_model``, seeds 0
and 1), ``--n`` off-task probe samples:

- **harvest**: :func:`mmlens.represent.fingerprint.collect_last_token` for both
  models (every decoder layer's last-token state);
- **cka**: :func:`mmlens.represent.fingerprint.fingerprint` on them: the
  layers x layers matrices of the three CKA kinds and the score's bootstrap
  (``--boot`` resamples).

Wall seconds are medians of ``--repeats`` interleaved runs; CPU seconds
(``time.process_time``) of the same runs are reported too, as the machine is
shared.

Example:
    nice -n 10 python benchmarks/fingerprint.py --n 200 --layers 24 --repeats 3 --threads 1 --json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mmlens
    from mmlens.data.domains import vocabulary
    from mmlens.represent.fingerprint import collect_last_token, fingerprint, probe_samples
    from mmlens.zoo.domains_llava import build_model, build_processor

    processor = build_processor(vocabulary())
    models = [mmlens.wrap(build_model(processor, seed=s, layers=args.layers, hidden=args.hidden), processor,
                          name=f"random-{args.layers}L-seed{s}") for s in (0, 1)]
    samples = probe_samples("off-task", args.n)
    wall: dict[str, list[float]] = {"harvest": [], "cka": []}
    cpu: dict[str, list[float]] = {"harvest": [], "cka": []}
    for _ in range(args.repeats):
        w, c = time.perf_counter(), time.process_time()
        reps = [collect_last_token(m, samples) for m in models]
        wall["harvest"].append(time.perf_counter() - w)
        cpu["harvest"].append(time.process_time() - c)
        w, c = time.perf_counter(), time.process_time()
        result = fingerprint(reps[0], reps[1], n_boot=args.boot)
        wall["cka"].append(time.perf_counter() - w)
        cpu["cka"].append(time.process_time() - c)
    figures = {"n": args.n, "layers": args.layers, "hidden": args.hidden, "boot": args.boot,
               "matrix": list(result.matrices["linear"].shape),
               "wall_s": {k: round(statistics.median(v), 3) for k, v in wall.items()},
               "cpu_s": {k: round(statistics.median(v), 3) for k, v in cpu.items()}}
    figures["cka_over_harvest_wall"] = round(figures["wall_s"]["cka"] / figures["wall_s"]["harvest"], 4)
    figures["cka_over_harvest_cpu"] = round(figures["cpu_s"]["cka"] / figures["cpu_s"]["harvest"], 4)
    print(f"n={args.n}, {args.layers} x {args.layers} layers: harvest {figures['wall_s']['harvest']} s wall "
          f"({figures['cpu_s']['harvest']} s CPU), CKA {figures['wall_s']['cka']} s wall "
          f"({figures['cpu_s']['cka']} s CPU): ratio {figures['cka_over_harvest_wall']} wall, "
          f"{figures['cka_over_harvest_cpu']} CPU")
    emit(figures, args.json)


if __name__ == "__main__":
    main()
