"""Fixtures for the SAE dashboard, label and SAE-V tests: a shapes-llava store and an SAE with known latents.

Import the fixtures into a test module (``from tests.sae.shapes_fixtures import shapes_store, concept_sae``).

``concept_sae`` is built, not trained: latent ``i < 9`` reads the direction
from the other image patches to the patches of concept ``CONCEPTS[i]`` (a
colour or a shape) with its bias halfway between the two means, so its
correct label is known; the other latents never fire.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmlens
from mmlens.data.readers import open_reader
from mmlens.sae import SparseAutoencoder
from mmlens.sae.codes import store_samples
from mmlens.sae.files import save_sae
from mmlens.sae.labels import concept_table
from mmlens.store import Store
from mmlens.store.harvest import harvest

SITE = "lm.L2.resid"
CONCEPTS = ["colour:red@image", "colour:green@image", "colour:blue@image", "colour:yellow@image",
            "colour:purple@image", "shape:circle@image", "shape:square@image", "shape:triangle@image",
            "shape:cross@image"]


@pytest.fixture(scope="session")
def shapes_model() -> mmlens.Model:
    return mmlens.load("shapes-llava")


@pytest.fixture(scope="session")
def shapes_store(shapes_model, tmp_path_factory) -> Path:
    """``shapes:val[0:12]`` through shapes-llava at lm.L2.resid (two shards)."""
    out = tmp_path_factory.mktemp("sae-dash") / "store"
    harvest(shapes_model, open_reader("shapes:val[0:12]"), out, [SITE], shard_size=6, batch_size=6)
    return out


@pytest.fixture(scope="session")
def concept_sae(shapes_store, tmp_path_factory) -> tuple[SparseAutoencoder, Path]:
    """The built SAE (16 latents, TopK k=2) and the folder it is saved in."""
    store = Store.open(shapes_store)
    table = concept_table(store.tokens, store_samples(store))
    x = store.read(SITE).float()
    image = torch.from_numpy(store.tokens.column("modality").to_numpy(zero_copy_only=False) == "image")
    sae = SparseAutoencoder(x.shape[1], 16, "topk", k=2, site=SITE)
    with torch.no_grad():
        mean = x[image].mean(0)
        sae.W_enc.zero_()
        sae.b_dec.copy_(mean)
        sae.b_enc.fill_(-1e4)  # latents past the concepts never fire
        for i, name in enumerate(CONCEPTS):
            on = torch.from_numpy(table.truth[:, table.names.index(name)])
            direction = x[on].mean(0) - x[image & ~on].mean(0)
            direction = direction / direction.norm()
            projection = (x - mean) @ direction
            sae.W_enc[:, i] = direction
            sae.b_enc[i] = -(projection[on].mean() + projection[image & ~on].mean()) / 2
        sae.W_dec.copy_(sae.W_enc.T)
    folder = tmp_path_factory.mktemp("sae-dash") / "sae"
    save_sae(sae, folder)
    return sae, folder
