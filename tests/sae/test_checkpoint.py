"""SAE training checkpoints: a round trip of weights, Adam's moments and loop state; a swap cut by a kill."""

from __future__ import annotations

import json

import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.sae.checkpoint import (CHECKPOINT, OLD, STATE, find_checkpoint, read_checkpoint, restore_optimizer,
                                   write_checkpoint)
from mmlens.sae.model import SparseAutoencoder


def trained_step(seed: int = 0) -> tuple[SparseAutoencoder, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(8, 16, "topk", k=4)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(32, 8)
    ((sae(x) - x) ** 2).mean().backward()
    optimizer.step()
    return sae, optimizer


def test_round_trip_restores_weights_moments_and_state(tmp_path):
    sae, optimizer = trained_step()
    since = torch.arange(16)
    folder = write_checkpoint(tmp_path, sae, optimizer, {"step": 7}, {"since_fired": since})
    assert folder == tmp_path / CHECKPOINT and find_checkpoint(tmp_path) == folder
    loaded, tensors, state = read_checkpoint(folder)
    assert state == {"step": 7} and torch.equal(tensors["since_fired"], since)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), loaded.state_dict().values()))
    fresh = torch.optim.Adam(loaded.parameters(), lr=1e-2)
    restore_optimizer(fresh, tensors)
    for old, new in zip(optimizer.param_groups[0]["params"], fresh.param_groups[0]["params"]):
        for key, value in optimizer.state[old].items():
            assert torch.equal(fresh.state[new][key], value), key


def test_a_kill_during_the_swap_leaves_the_old_checkpoint_found(tmp_path):
    sae, optimizer = trained_step()
    write_checkpoint(tmp_path, sae, optimizer, {"step": 1}, {})
    (tmp_path / CHECKPOINT).rename(tmp_path / OLD)  # killed between the two renames
    assert find_checkpoint(tmp_path) == tmp_path / OLD
    write_checkpoint(tmp_path, sae, optimizer, {"step": 2}, {})
    assert json.loads((find_checkpoint(tmp_path) / STATE).read_text())["step"] == 2 and not (tmp_path / OLD).exists()


def test_an_unreadable_checkpoint_says_to_remove_it(tmp_path):
    sae, optimizer = trained_step()
    folder = write_checkpoint(tmp_path, sae, optimizer, {"step": 1}, {})
    (folder / STATE).write_text("{not json")
    with pytest.raises(MmlensError, match="unreadable .*remove it to start over"):
        read_checkpoint(folder)
