"""What every benchmark script shares: timing by medians of interleaved repeats, and the --json contract."""

from __future__ import annotations

import json
import statistics
import time
from typing import Callable

import torch


def median_seconds(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time of each function, run interleaved so machine load hits all alike."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def emit(figures: dict, as_json: bool) -> None:
    """With --json the last line printed is one JSON object of the figures."""
    if as_json:
        print(json.dumps(figures))


def no_grad(function: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return function()

    return run
