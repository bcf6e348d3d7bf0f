"""Probe training cost against the cost of harvesting the activations it reads.

``shapes-llava`` over ``--samples`` shapes-world test questions:

- **harvest**: :func:`mmlens.store.harvest.harvest` of ``lm.embed`` and every
  ``lm.L*.resid``, image and text tokens, float16, into a fresh store;
- **labels**: :func:`mmlens.represent.probe_tasks.shapes_tasks` (every task's
  labels and control labels from the shapes world);
- **probes**: :func:`mmlens.represent.probes.train_probes` for every task at
  every site (a probe and a control probe each).

Wall seconds are medians of ``--repeats`` runs; CPU seconds
(``time.process_time``) of the same runs are reported too, as the machine is
shared.

Example:
    nice -n 10 python benchmarks/probes.py --samples 400 --repeats 3 --threads 1 --json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import mmlens
    from mmlens.data.readers import open_reader
    from mmlens.represent.probe_tasks import shapes_tasks
    from mmlens.represent.probes import fit_score, train_probes
    from mmlens.store import Store
    from mmlens.store.harvest import harvest

    import numpy as np
    fit_score(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2, np.arange(20) % 4 == 0)  # imports
    model = mmlens.load("shapes-llava")
    steps = ("harvest", "labels", "probes")
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            clock = (time.perf_counter(), time.process_time())
            harvest(model, open_reader(f"shapes:test[0:{args.samples}]"), Path(tmp) / "s",
                    ["lm.embed", "lm.L*.resid"], modalities=["image", "text"], shard_size=100)
            store = Store.open(Path(tmp) / "s")
            clock = _lap("harvest", clock, wall, cpu)
            tasks = shapes_tasks(store)
            clock = _lap("labels", clock, wall, cpu)
            results = train_probes(store, tasks)
            _lap("probes", clock, wall, cpu)
    figures = {"samples": args.samples, "tokens": len(store), "sites": store.sites,
               "tasks": {r["task"]: r["rows"] for r in results},
               "wall_s": {k: round(statistics.median(v), 3) for k, v in wall.items()},
               "cpu_s": {k: round(statistics.median(v), 3) for k, v in cpu.items()}}
    for unit in ("wall", "cpu"):
        spent = figures[f"{unit}_s"]
        figures[f"probes_over_harvest_{unit}"] = round((spent["labels"] + spent["probes"]) / spent["harvest"], 4)
    print(f"{args.samples} samples: harvest {figures['wall_s']['harvest']} s wall ({figures['cpu_s']['harvest']} s "
          f"CPU), labels + probes {figures['wall_s']['labels']} + {figures['wall_s']['probes']} s wall "
          f"({figures['cpu_s']['labels']} + {figures['cpu_s']['probes']} s CPU)")
    emit(figures, args.json)


def _lap(name: str, clock: tuple[float, float], wall: dict, cpu: dict) -> tuple[float, float]:
    now = (time.perf_counter(), time.process_time())
    wall[name].append(now[0] - clock[0])
    cpu[name].append(now[1] - clock[1])
    return now


if __name__ == "__main__":
    main()
