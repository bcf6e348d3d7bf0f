"""Memory budgets: parsing, defaults, rows per pass, the too-small error and the out-of-memory retry."""

import pytest
import torch

from mmlens.budget import (
    SATURATION_TOKENS,
    UNLIMITED,
    Passes,
    budget_bytes,
    default_budget,
    parse_budget,
    plan_passes,
    row_bytes,
    rows_per_pass,
    saturation_items,
)
from mmlens.errors import MmlensError


def test_budgets_parse_bytes_and_units():
    assert parse_budget(2048) == 2048
    assert parse_budget("2GB") == 2 * 10**9
    assert parse_budget("1.5 GiB") == int(1.5 * 2**30)
    assert parse_budget("unlimited") == UNLIMITED
    assert parse_budget(None) is None
    for bad in ("two gigs", "-1GB", 0, True):
        with pytest.raises(MmlensError):
            parse_budget(bad)


def test_the_default_is_a_share_of_the_available_ram_on_the_cpu():
    assert 0 < default_budget("cpu") == budget_bytes(None, "cpu")


def test_rows_per_pass_fills_the_budget_and_names_the_smallest_that_works():
    assert rows_per_pass(1000, 100, 4, "x") == 4  # never more than there are
    assert rows_per_pass(1000, 300, 40, "x") == 3
    with pytest.raises(MmlensError, match="needs at least 2 KB") as raised:
        rows_per_pass(1000, 2000, 4, "occlusion")
    assert "\n" not in str(raised.value)


def test_one_row_costs_more_with_gradients_and_longer_sequences(tiny_llava):
    assert row_bytes(tiny_llava, 64, grad=True) > row_bytes(tiny_llava, 64) > 0
    assert row_bytes(tiny_llava, 128) > row_bytes(tiny_llava, 64)
    plan = plan_passes(tiny_llava, 10, 64, row_bytes(tiny_llava, 64) * 3, rows=1)
    assert plan.size == 3


def test_passes_stop_stacking_at_the_saturation_count_and_the_budget_stays_the_cap(tiny_llava):
    saturation = SATURATION_TOKENS["cpu"]
    assert saturation_items(saturation, "cpu") == 1 == saturation_items(10 * saturation, "cpu")
    assert saturation_items(saturation // 4, "cpu") == 4
    assert saturation_items(saturation // 4 + 1, "cpu") == 4  # the fewest rows that reach it
    # Unlimited: the saturation count decides; items of several rows count all their tokens.
    assert plan_passes(tiny_llava, 100, saturation // 8, "unlimited").size == 8
    assert plan_passes(tiny_llava, 100, saturation // 8, "unlimited", rows=2).size == 4
    assert plan_passes(tiny_llava, 100, 3 * saturation, "unlimited").size == 1
    # The default budget (a quarter of the RAM) no longer fills up with rows.
    assert plan_passes(tiny_llava, 100, saturation // 8).size == 8
    # An explicit small budget caps it below the saturation count.
    assert plan_passes(tiny_llava, 100, saturation // 8, row_bytes(tiny_llava, saturation // 8) * 3).size == 3


def test_a_suffix_against_recorded_keys_costs_less_than_the_whole_sequence(tiny_llava):
    one_query = row_bytes(tiny_llava, 1, keys=512)
    assert row_bytes(tiny_llava, 1) < one_query < row_bytes(tiny_llava, 512)


def _fake_pass(limit, calls):
    """A pass over items [start, stop) that runs out of memory above ``limit`` items."""
    def step(start, stop):
        calls.append((start, stop))
        if stop - start > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return list(range(start, stop))
    return step


def test_out_of_memory_halves_the_rows_and_retries_once():
    calls = []
    out = Passes(total=10, size=8, item_bytes=1, budget=8, what="fake").run(_fake_pass(4, calls))
    assert sum(out, []) == list(range(10))
    assert calls[0] == (0, 8) and all(stop - start <= 4 for start, stop in calls[1:])


def test_a_second_out_of_memory_stops_with_one_line():
    with pytest.raises(MmlensError, match="fake ran out of memory at 4 row") as raised:
        Passes(total=10, size=8, item_bytes=1, budget=8, what="fake").run(_fake_pass(2, []))
    assert "\n" not in str(raised.value)


def test_runtime_errors_that_say_out_of_memory_count_and_others_pass_through():
    def step(start, stop):
        if stop - start > 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: not enough memory: "
                               "you tried to allocate 1 bytes. out of memory")
        return start
    assert Passes(total=3, size=2, item_bytes=1, budget=2).run(step) == [0, 1, 2]

    def broken(start, stop):
        raise ValueError("not memory")
    with pytest.raises(ValueError):
        Passes(total=3, size=2, item_bytes=1, budget=2).run(broken)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_first_pass_is_one_measured_row():
    sizes = []

    def step(start, stop):
        sizes.append(stop - start)
        return torch.empty((stop - start) * 2**20, dtype=torch.uint8, device="cuda").sum()

    Passes(total=8, size=8, item_bytes=1, budget=3 * 2**20, device=torch.device("cuda")).run(step)
    assert sizes[0] == 1 and max(sizes[1:]) <= 3
