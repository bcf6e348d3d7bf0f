"""The weights' identity: one sha256 that follows every weight and nothing else."""

from __future__ import annotations

import torch

import mmlens
from mmlens.models.weights import weights_sha256


def test_weights_hash_follows_every_weight_and_nothing_else():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    first = weights_sha256(model)
    assert weights_sha256(model) == first
    assert weights_sha256(torch.nn.Sequential(*model)) == first  # same names, same tensors
    with torch.no_grad():
        model[1].bias[0] += 1e-6
    assert weights_sha256(model) != first
    assert weights_sha256(model.to(torch.bfloat16)) != weights_sha256(model.float())


def test_the_shipped_model_hashes_the_same_on_every_load():
    first, second = mmlens.load(), mmlens.load()
    assert weights_sha256(first.hf) == weights_sha256(second.hf)
    assert len(weights_sha256(first.hf)) == 64


def test_the_report_layer_still_offers_it():
    from mmlens.report.output import weights_sha256 as from_report

    assert from_report is weights_sha256
