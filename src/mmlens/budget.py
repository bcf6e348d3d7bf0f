"""Memory budgets: how many stacked rows one pass of a method may hold.

Methods that stack copies of a batch (integrated gradients' path points,
occlusion and RISE variants, tracing and knockout conditions, faithfulness
curves, neuron scoring) size their passes from ``memory_budget``, never from a
fixed row count. This module owns that name and its meaning:

- ``memory_budget`` is bytes (an ``int``), a string such as ``"2GB"``,
  ``"512MiB"`` or ``"unlimited"``, or ``None`` for the default: 80% of the
  free memory of a CUDA device (``torch.cuda.mem_get_info``), or 25% of the
  available RAM on the CPU (``MemAvailable`` of ``/proc/meminfo``, else
  ``os.sysconf``). It bounds the memory of the stacked rows, not the model's
  weights or what a method records once. (``max_memory`` is accelerate's
  per-device map, a different thing.)
- The budget is a cap, not a target: a pass stacks the fewest rows whose
  tokens reach :data:`SATURATION_TOKENS` (more rows buy little throughput
  past it, and cost their memory), fewer if the budget holds fewer.
- The cost of one row is estimated from the language model's config before any
  work (:func:`row_bytes`), conservatively: activations per token and layer of
  about ``16 x width + 4 x intermediate`` elements plus ``3 x heads x seq``
  attention probabilities (fp32; a log-sum-exp per head instead where a fused
  attention kernel runs on a GPU) when gradients flow through every layer; one
  layer's worth of those (``8 x width + 3 x intermediate + 2 x heads x seq``)
  without gradients; plus a few fp32 vocabulary rows of logits. On a CUDA
  device the first pass runs one row and ``torch.cuda.max_memory_allocated``
  measures the real cost, which then sizes the remaining passes.
- A budget below one row's estimate raises one line naming the smallest budget
  that works, before any work. An out-of-memory error mid-run halves the rows
  per pass and retries once; a second one stops with one line
  (:meth:`Passes.run`).

Example:
    >>> parse_budget("2GB"), parse_budget("512MiB"), parse_budget(1000)
    (2000000000, 536870912, 1000)
    >>> passes = Passes(total=10, size=4, item_bytes=100, budget=400, what="occlusion")
    >>> passes.run(lambda start, stop: list(range(start, stop)))
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, TypeVar, Union

import torch

from mmlens.errors import MmlensError
from mmlens.models.runtime.implementation import config_attention

if TYPE_CHECKING:
    from mmlens.model import Model

MemoryBudget = Union[int, str, None]
T = TypeVar("T")

#: Tokens per pass past which stacking more rows stops paying, per device type: passes stack the fewest rows
#: that reach it, never more than the budget holds. Measured with ``benchmarks/saturation.py``. CPU (one
#: thread): per-row time still fell 14-40% per doubling below 512 tokens a pass and by at most ~6% above it
#: (594-token rows: no gain from 2, 4 or 8 rows). CUDA (one H100, LLaVA-1.5-7B's config in bf16): forward +
#: backward keeps paying up to ~2,048 tokens (594-token rows: 0.52x the time per row at 2 rows, 0.41x at 4),
#: but gradient passes keep 512, one row a pass from ~600 tokens, so integrated gradients stays within issue
#: 13's 2x-of-bare-peak memory goal; its time already meets the 1.3x-of-34-bare-passes goal at one row.
SATURATION_TOKENS = {"cpu": 512, "cuda": 512, "mps": 512}
#: The same for passes without gradients (occlusion, RISE, tracing, knockout), whose rows cost one layer's
#: activations, not all of them. CUDA: 594-token rows ran at 0.74x the time per row at 2 rows, 0.69x at 4
#: and 0.68x at 8; 256-token rows kept gaining to 8 rows (2,048 tokens).
FORWARD_SATURATION_TOKENS = {"cpu": 512, "cuda": 1024, "mps": 512}
GPU_SHARE = 0.8  # of the free device memory
CPU_SHARE = 0.25  # of the available RAM
UNLIMITED = sys.maxsize
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_budget(value: MemoryBudget) -> int | None:
    """Bytes from ``value`` (int, ``"2GB"``, ``"1.5 GiB"``, ``"unlimited"``); ``None`` stays ``None`` (the default).

    Example:
        >>> parse_budget("1.5kb"), parse_budget("unlimited") == UNLIMITED, parse_budget(None)
        (1500, True, None)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise MmlensError(f"memory budget {value!r} is not a size; give bytes or a size such as '2GB'")
    if isinstance(value, (int, float)):
        number = int(value)
    else:
        text = str(value).strip().lower()
        if text in ("unlimited", "inf", "none"):
            return UNLIMITED
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmgt]i?b|b)?", text)
        if match is None:
            raise MmlensError(f"memory budget {value!r} is not a size; give bytes or a size such as '2GB' or '512MiB'")
        number = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if number < 1:
        raise MmlensError(f"memory budget {value!r} must be positive")
    return number


def default_budget(device: torch.device | str) -> int:
    """Most of the free memory of a CUDA device, or a fixed share of the available RAM.

    Example:
        >>> default_budget("cpu") > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free * GPU_SHARE))
    return max(1, int(_available_ram() * CPU_SHARE))


def budget_bytes(value: MemoryBudget, device: torch.device | str) -> int:
    """``value`` in bytes, or the default budget of ``device`` for ``None``.

    Example:
        >>> budget_bytes("1KB", "cpu")
        1000
    """
    parsed = parse_budget(value)
    return default_budget(device) if parsed is None else parsed


def format_bytes(count: int) -> str:
    """A byte count for people: ``'1.5 MB'``.

    Example:
        >>> format_bytes(1_500_000), format_bytes(999)
        ('1.5 MB', '999 B')
    """
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} B"


def row_bytes(model: "Model", seq: int, *, grad: bool = False, positions: int = 1, keys: int | None = None) -> int:
    """Estimated bytes one stacked row of ``seq`` tokens costs in a language-model pass (see the module notes).

    ``grad``: gradients flow back through every layer (activations of all
    layers are kept); ``positions``: how many positions' logits are read;
    ``keys``: the key length when the ``seq`` queries attend to more keys than
    themselves (a resumed suffix against recorded keys and values, which each
    row then holds a copy of).

    Example:
        >>> import mmlens
        >>> model = mmlens.load("tiny-llama")
        >>> row_bytes(model, 16, grad=True) > row_bytes(model, 16)
        True
    """
    text = _text_config(model)
    width = int(getattr(text, "hidden_size", 0) or 0)
    intermediate = int(getattr(text, "intermediate_size", 0) or 4 * width)
    heads = int(getattr(text, "num_attention_heads", 0) or 1)
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    size = next(model.hf.parameters()).element_size()
    keys = seq if keys is None else max(keys, seq)
    # Per query and head: eager attention keeps keys x probabilities; fused kernels (SDPA, flash) on a GPU keep
    # one log-sum-exp. Off CUDA, SDPA may fall back to the math path, so it is counted as eager there.
    fused = config_attention(text) != "eager" and model.device.type == "cuda"
    probabilities = 2 * heads * 4 if fused else heads * keys * 4
    prefix = 4 * (keys - seq) * width * size  # recorded keys and values repeated per row, then joined with the suffix's
    if grad:
        per_layer = seq * ((16 * width + 4 * intermediate) * size + 3 * probabilities) + prefix
        activations = model.n_layers * per_layer + 4 * seq * width * size  # + the input and its gradient
    else:
        activations = seq * ((8 * width + 3 * intermediate) * size + 2 * probabilities) + prefix
    logits = 3 * positions * vocab * 4  # logits, their fp32 softmax and its gradient
    return int(activations + logits)


def rows_per_pass(budget: int, item_bytes: int, total: int, what: str) -> int:
    """How many items of ``item_bytes`` each fit in ``budget`` (at most ``total``); too small a budget raises.

    Example:
        >>> rows_per_pass(1000, 300, 10, "occlusion")
        3
        >>> rows_per_pass(100, 300, 10, "occlusion")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: memory budget 100 B is too small for one row of occlusion: it needs at least 300 B
    """
    if item_bytes > budget:
        raise MmlensError(f"memory budget {format_bytes(budget)} is too small for one row of {what}: "
                          f"it needs at least {format_bytes(item_bytes)}")
    return max(1, min(max(total, 1), budget // max(item_bytes, 1)))


def saturation_items(tokens: int, device: torch.device | str, grad: bool = True) -> int:
    """How many items of ``tokens`` tokens each one pass needs to reach the saturation count of ``device``.

    Past that many tokens per pass, stacking more rows buys too little
    throughput to pay for their memory (:data:`SATURATION_TOKENS` for passes
    with gradients, :data:`FORWARD_SATURATION_TOKENS` without).

    Example:
        >>> saturation_items(16, "cpu"), saturation_items(300, "cpu"), saturation_items(600, "cpu")
        (32, 2, 1)
    """
    kind = torch.device(device).type
    table = SATURATION_TOKENS if grad else FORWARD_SATURATION_TOKENS
    saturation = table.get(kind, table["cpu"])
    return max(1, -(-saturation // max(tokens, 1)))


def plan_passes(model: "Model", total: int, seq: int, memory_budget: MemoryBudget = None, *, rows: int = 1,
                grad: bool = False, positions: int = 1, keys: int | None = None,
                what: str = "this method") -> "Passes":
    """Passes for ``total`` items of ``rows`` stacked rows of ``seq`` tokens each, under ``memory_budget``.

    Items per pass: the fewest whose tokens reach the device's saturation
    count (:func:`saturation_items`), never more than ``memory_budget`` holds
    (the hard cap). ``keys``: see :func:`row_bytes`. Raises before any work if
    the budget cannot hold one item.

    Example:
        >>> import mmlens
        >>> model = mmlens.load("tiny-llama")
        >>> plan_passes(model, 64, 16, "unlimited").size  # 16 tokens an item: 32 items reach 512 tokens
        32
        >>> plan_passes(model, 64, 16, row_bytes(model, 16) * 3).size  # the budget caps it
        3
    """
    item = row_bytes(model, seq, grad=grad, positions=positions, keys=keys) * max(rows, 1)
    budget = budget_bytes(memory_budget, model.device)
    size = min(rows_per_pass(budget, item, total, what), saturation_items(seq * max(rows, 1), model.device, grad))
    return Passes(total, size, item, budget, what, torch.device(model.device))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error of torch (CUDA, MPS or the CPU allocator).

    Example:
        >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")), is_out_of_memory(KeyError())
        (True, False)
    """
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    return isinstance(error, (RuntimeError, MemoryError)) and (
        isinstance(error, MemoryError) or "out of memory" in str(error).lower())


@dataclass
class Passes:
    """``total`` items split into passes of ``size`` items; :meth:`run` does the passes.

    Example:
        >>> calls = []
        >>> def step(start, stop):
        ...     calls.append(stop - start)
        ...     if stop - start > 2:
        ...         raise torch.OutOfMemoryError("out of memory")
        ...     return stop - start
        >>> Passes(total=8, size=4, item_bytes=1, budget=4, what="demo").run(step), calls
        ([2, 2, 2, 2], [4, 2, 2, 2, 2])
    """

    total: int
    size: int
    item_bytes: int
    budget: int
    what: str = "this method"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def run(self, step: Callable[[int, int], T]) -> list[T]:
        """``step(start, stop)`` over ``[0, total)`` in passes, in order; their results as a list.

        On a CUDA device (budget not unlimited) the first pass holds one item
        and measures its peak memory, which sizes the rest (never above the estimate's size). An out-of-memory error halves the pass
        size and retries once; a second one raises :class:`MmlensError`.
        """
        out: list[T] = []
        start, size, retried = 0, self.size, False
        measure = (self.device.type == "cuda" and torch.cuda.is_available() and self.total > 1
                   and self.budget < UNLIMITED)
        while start < self.total:
            stop = min(self.total, start + (1 if measure else size))
            if measure:
                torch.cuda.synchronize(self.device)
                before = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            try:
                out.append(step(start, stop))
            except Exception as error:  # noqa: BLE001 - only out-of-memory errors are handled
                if not is_out_of_memory(error):
                    raise
                _release(self.device)
                if retried or size == 1:
                    raise MmlensError(
                        f"{self.what} ran out of memory at {stop - start} row(s) per pass "
                        f"(budget {format_bytes(self.budget)}); give a smaller --memory-budget") from None
                retried, size, measure = True, max(1, size // 2), False
                continue
            if measure:
                used = max(1, torch.cuda.max_memory_allocated(self.device) - before)
                size = max(1, min(size, self.budget // used))
                measure = False
            start = stop
        return out


def _release(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _text_config(model: "Model"):
    config = model.hf.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _available_ram() -> int:
    """Available RAM in bytes: ``MemAvailable`` of ``/proc/meminfo``, else free pages from ``os.sysconf``."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9
