"""Every method at about 3,000 tokens within its budget (issue 13): LLaVA-NeXT anyres grids, Qwen2-VL large images.

The models are tiny towers and decoders behind the released checkpoints' image
geometry (``mmlens.zoo.tiny.real_geometry``): a 672 px square is LLaVA-v1.6's
base view plus a 2 x 2 grid of 336 px tiles (2,933 tokens), a 1512 px square is
Qwen2-VL's 54 x 54 merged patches (2,924 tokens, 11,664 patches in the tower).
Each method runs at its default memory budget through ``mmlens.explain``, as a
user calls it, with lighter settings where a method repeats passes (IG steps,
RISE masks, the occlusion window): the sequence is what is under test.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens.attribution.api import METHODS
from mmlens.attribution.occlusion import occlusion
from mmlens.budget import row_bytes
from mmlens.causal import trace
from mmlens.layout import Modality
from mmlens.lens import knockout
from mmlens.readout import build_targets

FAMILIES = {"tiny-llava-next-real-geometry": (672, 672), "tiny-qwen2-vl-real-geometry": (1512, 1512)}
PROMPT = "<image> what colour is the circle ?"
LIGHTER = {"integrated_gradients": {"steps": 8}, "rise": {"masks": 32}, "occlusion": {"window": 8}}


def large_image(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    name = request.param
    return name, mmlens.load(name), large_image(*FAMILIES[name])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_attribution_runs_at_3000_tokens_and_covers_the_image(family, method):
    name, model, image = family
    explained = mmlens.explain(model, PROMPT, [image], methods=[method], max_new_tokens=1, options=LIGHTER)
    scores = explained.scores[method]
    assert scores.shape[-1] > 2900, f"{name}: {scores.shape[-1]} tokens"
    on_image = scores[0][explained.layout.mask(Modality.IMAGE)[0]]
    assert bool(torch.isfinite(on_image).all()) and float(on_image.std()) > 0
    heatmap = explained.heatmaps(method)[0]
    assert heatmap.shape == (image.height, image.width) and bool(np.isfinite(heatmap).all())


def test_occlusion_of_an_anyres_grid_does_not_depend_on_the_budget():
    model = mmlens.load("tiny-llava-next-real-geometry")
    targets = build_targets(model, model.prepare(PROMPT, [large_image(672, 672)]), max_new_tokens=1)
    one_variant = row_bytes(model, targets.batch.input_ids.shape[1], positions=targets.count)
    small = occlusion(model, targets, window=8, memory_budget=one_variant).scores
    large = occlusion(model, targets, window=8, memory_budget="unlimited").scores
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-6)


def test_knockout_and_tracing_run_at_3000_tokens(family):
    name, model, image = family
    batch = model.prepare(PROMPT, [image])
    answer = build_targets(model, batch, max_new_tokens=1).tokens[:, 0]
    pictured = batch.layout.mask(Modality.IMAGE)
    last = torch.zeros_like(pictured)
    last[:, -1] = True
    groups = {"image": pictured, "text": batch.layout.mask(Modality.TEXT) & ~last, "last": last}
    blocked = knockout(model, batch, groups, window=1, answer=answer)
    traced = trace(model, batch, groups, answer=answer, components=("resid",))
    assert tuple(blocked.probability.shape) == (model.n_layers, 3, 1)
    values = torch.cat([blocked.probability.flatten(), blocked.baseline, traced.p_clean, traced.p_corrupt,
                        *(p.flatten() for p in traced.p_patched.values())])
    assert bool(torch.isfinite(values).all()) and bool(((values >= 0) & (values <= 1)).all())
