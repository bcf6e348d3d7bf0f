"""What every benchmark script shares: timing by medians of interleaved repeats, paired ratios, the --json contract."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Callable

import numpy as np
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


def paired_ratios(calls: dict[str, Callable[[], float]], pairs: int, warmup: int, goal: float) -> dict:
    """``pairs`` rounds of every call in ``calls`` (name -> function returning its seconds; the baseline first).

    The order is reversed every other round, so drift and load hit every call
    alike. Per call after the baseline: its median, the median of the
    per-round ratios to the baseline with a 95% percentile-bootstrap interval
    (``scipy.stats.bootstrap``), the geometric mean of the ratios with its
    interval, and ``meets_goal``: the interval's upper bound is under ``goal``.
    """
    from scipy.stats import bootstrap

    from mmlens.metrics.sanity import bootstrap_mean

    for _ in range(warmup):
        for call in calls.values():
            call()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    load = [round(os.getloadavg()[0], 2)]
    for k in range(pairs):
        for name in names if k % 2 == 0 else names[::-1]:
            times[name].append(calls[name]())
    load.append(round(os.getloadavg()[0], 2))
    base = np.asarray(times[names[0]])
    out: dict = {"pairs": pairs, "load": load, f"{names[0]}_ms": round(float(np.median(base)) * 1e3, 2)}
    for name in names[1:]:
        ratios = np.asarray(times[name]) / base
        interval = bootstrap((ratios,), np.median, confidence_level=0.95, n_resamples=4000, method="percentile",
                             random_state=0).confidence_interval
        geometric = [math.exp(v) for v in bootstrap_mean(np.log(ratios), resamples=4000)]
        out[name] = {"ms": round(float(np.median(times[name])) * 1e3, 2),
                     "extra_ms": round(float(np.median(np.asarray(times[name]) - base)) * 1e3, 2),
                     "ratio": round(float(np.median(ratios)), 4),
                     "ratio_low": round(float(interval.low), 4), "ratio_high": round(float(interval.high), 4),
                     "geometric_mean": [round(v, 4) for v in geometric],
                     "meets_goal": bool(interval.high < goal)}
    return out


def emit(figures: dict, as_json: bool) -> None:
    """With --json the last line printed is one JSON object of the figures."""
    if as_json:
        print(json.dumps(figures))


def no_grad(function: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return function()

    return run
