"""Stage 1 of the domains-llava recipe: the vision tower alone, on every domain's patch and image labels.

Also the recipe's configuration (:class:`DomainsConfig`) and its training data
(:func:`train_sample`), which stage 2 (:mod:`mmlens.zoo.train.domains`) shares.

Stage 1 may run in two phases: the tower's first ``stage1_steps`` on ``mix``,
then, when ``stage1b_steps`` > 0, a continuation ("stage 1b") from that tower
with a fresh head, a fresh warm-up and cosine schedule and its own mix
(by default :data:`MIX_1B`, five in eight images of the shapes world, whose
object shapes the first phase left at 54% on a linear probe). Each phase is
seeded, checkpointed every 100 steps and cached, so a killed run resumes.

Example:
    >>> [train_sample(i).domain for i in range(3)]
    ['shapes', 'glyphs', 'shapes']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmlens.data import domains as world
from mmlens.data.shapes import COLOURS, SHAPES
from mmlens.data.shapes import patch_labels as shape_patch_labels
from mmlens.zoo.evaluate import encode
from mmlens.zoo.shapes_llava import GRID
from mmlens.zoo.train.common import _cache_tower, _log, _optimise, _resume, _reuse_tower, _run_stage, _save_state, lr_factor

STAGE1B_OFFSET = 3_000_000  # stage-1b world indices start here (stage 1 below, stage 2 from 5e6)
STAGE2_OFFSET = 5_000_000
SEED_STRIDE = 10_000_000
# Training index i is a sample of domain mix[i % len(mix)]. By default shapes (five
# question types, 20 pair classes) and glyphs (16 letter classes) get 2 of 6 each:
# with 1 of 5 each (3,000 x 32 stage-1 steps) a probe read their object patches'
# classes right only a third of the time, while cells and maps were learned.
MIX: tuple[str, ...] = ("shapes", "glyphs", "shapes", "cells", "glyphs", "maps")
# Stage 1b: shapes 5 of 8 (after 6,000 x 48 steps of MIX a probe read shape 54%, colour 99.9%);
# the other domains stay in so that their features are rehearsed, not forgotten.
MIX_1B: tuple[str, ...] = ("shapes", "shapes", "glyphs", "shapes", "cells", "shapes", "maps", "shapes")
_MAX_CLASSES = max(world.POOLED.values())


@dataclass
class DomainsConfig:
    """Everything that determines the trained weights."""

    seed: int = 0
    stage1_steps: int = 6000
    stage1_batch: int = 48
    stage1_lr: float = 2e-3
    stage2_steps: int = 4000
    batch: int = 24
    stage2_lr: float = 1e-3
    warmup: int = 50
    pack: int = 4
    pool: int = 12000  # distinct stage-2 images (features cached), reused with new questions each epoch
    layers: int = 4
    hidden: int = 128
    mlp: int = 256
    mix: tuple[str, ...] = MIX
    # Weight of the per-patch colour and shape labels of shapes images (0: the v2 recipe, none).
    # v2 gave shapes patches only their (colour, shape) pair, one of 41 union classes, and ended
    # at 63% colour / 33% shape on validation; shapes-llava learns colour, shape and pair per patch.
    shape_factors: float = 1.0
    stage1b_steps: int = 0  # 0: no continuation (the v3 recipe)
    stage1b_mix: tuple[str, ...] = MIX_1B
    stage1b_lr: float = 2e-3
    stage2_mix: tuple[str, ...] | None = None  # None: ``mix``


class DomainHead(nn.Module):
    """Stage-1 throw-away heads: per patch (class, row, column); on the patch mean, every pooled slot.

    Slots have up to :data:`_MAX_CLASSES` classes; the logits of classes a slot
    does not have are masked out.

    Example:
        >>> [tuple(x.shape) for x in DomainHead(64)(torch.zeros(1, 64, 64))[0]][:3]
        [(1, 64, 42), (1, 64, 8), (1, 64, 8)]
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        # union class (+ background), row, column, and shapes' colour and shape (+ background)
        self.sizes = (len(world.PATCH_CLASSES) + 1, GRID, GRID, len(COLOURS) + 1, len(SHAPES) + 1)
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, sum(self.sizes))
        self.pooled = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, len(world.POOLED) * _MAX_CLASSES))
        valid = torch.arange(_MAX_CLASSES)[None] < torch.tensor(list(world.POOLED.values()))[:, None]
        self.register_buffer("invalid", ~valid, persistent=False)

    def forward(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        pooled = self.pooled(tokens.mean(dim=1)).unflatten(-1, (len(world.POOLED), _MAX_CLASSES))
        return list(self.linear(self.norm(tokens)).split(self.sizes, dim=-1)), pooled.masked_fill(self.invalid, -1e4)


def _tower_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch tokens of the layer the projector reads (CLS dropped)."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def train_sample(index: int, mix: Sequence[str] = MIX) -> world.DomainSample:
    """Training sample ``index``: sample ``index`` of the train split of domain ``mix[index % len(mix)]``.

    Example:
        >>> [train_sample(i).domain for i in range(6)] == list(MIX)
        True
    """
    return world.make_sample(mix[index % len(mix)], "train", index)


def stage1_batch(cfg: DomainsConfig, step: int, mix: Sequence[str] | None = None,
                 offset: int = 0) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    """Images, per-patch labels and pooled labels of one step (of the phase whose indices start at ``offset``).

    Per-patch labels are ``batch x 5 x 64``: union class + 1, row, column, and
    for shapes images colour + 1 and shape + 1 (0 background; ``-100``, ignored,
    on other domains' images).

    Example:
        >>> images, patches, pooled = stage1_batch(DomainsConfig(stage1_batch=4), 0)
        >>> tuple(patches.shape), tuple(pooled.shape) == (4, len(world.POOLED))
        ((4, 5, 64), True)
    """
    base = cfg.seed * SEED_STRIDE + offset + step * cfg.stage1_batch
    samples = [train_sample(base + j, mix or cfg.mix) for j in range(cfg.stage1_batch)]
    labels = []
    for s in samples:
        cls = world.patch_labels(s)
        rows, cols = np.indices(cls.shape)
        where = [np.where(cls >= 0, rows, -100), np.where(cls >= 0, cols, -100)]  # object patches only
        if s.domain == "shapes":
            factors = [f + 1 for f in shape_patch_labels(s.objects, GRID)]
        else:
            factors = [np.full_like(cls, -100)] * 2
        labels.append(np.stack([cls + 1, *where, *factors]).reshape(5, -1))
    pooled = np.stack([world.pooled_labels(s) for s in samples])
    return [np.asarray(s.image) for s in samples], torch.from_numpy(np.stack(labels)), torch.from_numpy(pooled)


def _phases(cfg: DomainsConfig, work: Path) -> list[tuple[str, int, tuple[str, ...], float, int, Path]]:
    """(name, steps, mix, lr, index offset, cached tower) of each stage-1 phase."""
    tag = f"-sf{cfg.shape_factors:g}" if cfg.shape_factors else ""  # v2's towers (no factors) keep their names
    first = work / f"domains-stage1-seed{cfg.seed}-steps{cfg.stage1_steps}{tag}.safetensors"
    phases = [("stage 1", cfg.stage1_steps, cfg.mix, cfg.stage1_lr, 0, first)]
    if cfg.stage1b_steps:
        mix = "".join(d[0] for d in cfg.stage1b_mix)
        then = first.with_name(first.stem + f"-then{cfg.stage1b_steps}-{mix}-lr{cfg.stage1b_lr:g}.safetensors")
        phases.append(("stage 1b", cfg.stage1b_steps, cfg.stage1b_mix, cfg.stage1b_lr, STAGE1B_OFFSET, then))
    return phases


def train_stage1(model, processor, cfg: DomainsConfig, work: Path) -> None:
    """Train the vision tower on the world's patch and pooled labels, phase by phase; cache it under ``work``.

    Example:
        >>> train_stage1(model, processor, DomainsConfig(stage1_steps=2), Path("/tmp/w"))  # doctest: +SKIP
    """
    tower = model.model.vision_tower
    phases = _phases(cfg, work)
    if _reuse_tower(tower, phases[-1][-1]):
        return
    for k, (name, steps, mix, lr, offset, cache) in enumerate(phases):
        if not _reuse_tower(tower, cache):
            _train_phase(model, processor, cfg, work, name, steps, mix, lr, offset, cache, seed=cfg.seed + 2 * k)


def _train_phase(model, processor, cfg: DomainsConfig, work: Path, name: str, steps: int, mix: Sequence[str],
                 lr: float, offset: int, cache: Path, seed: int) -> None:
    tower = model.model.vision_tower
    torch.manual_seed(seed)
    head = DomainHead(tower.config.hidden_size)  # a fresh head per phase: only the tower is kept
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ckpt = work / f"domains-{name.replace(' ', '')}-seed{cfg.seed}.pt"
    start = _resume(ckpt, opt, name, tower=tower, head=head)
    tower.train()
    shape_hits: list[float] = []  # the slow skill, logged every checkpoint

    def step_fn(step: int) -> tuple[float, float]:
        images, labels, pooled = stage1_batch(cfg, step, mix, offset)
        pixels = encode(processor, images, ["<image>"] * len(images))["pixel_values"]
        logits, pooled_logits = head(_tower_tokens(model, pixels))
        loss = sum(nn.functional.cross_entropy(lg.flatten(0, 1), labels[:, k].flatten())
                   for k, lg in enumerate(logits[:3]))
        if cfg.shape_factors and (labels[:, 3] != -100).any():  # a batch without shapes images has none
            loss = loss + cfg.shape_factors * sum(nn.functional.cross_entropy(lg.flatten(0, 1), labels[:, k].flatten())
                                                  for k, lg in zip((3, 4), logits[3:]))
            on_object = labels[:, 4] > 0
            shape_hits.append((logits[4].argmax(-1) == labels[:, 4])[on_object].float().mean().item())
        # Each image's own slots weigh the same in total whatever their number (shapes has 109, cells 2).
        per_slot = nn.functional.cross_entropy(pooled_logits.flatten(0, 1), pooled.flatten(),
                                               ignore_index=-100, reduction="none").view(pooled.shape)
        known = (pooled != -100).float()
        loss = loss + 3 * ((per_slot * known).sum(1) / known.sum(1).clamp(min=1)).mean()
        _optimise(opt, params, loss, lr * lr_factor(step, steps, cfg.warmup))
        patch_ok = (logits[0].argmax(-1) == labels[:, 0]).float().mean().item()
        slot_ok = ((pooled_logits.argmax(-1) == pooled).float() * known).sum() / known.sum()
        return loss.item(), (patch_ok + slot_ok.item()) / 2

    def save_fn(step: int) -> None:
        if shape_hits:
            _log(f"{name}: training accuracy on shapes object patches' shape {np.mean(shape_hits):.3f} "
                 f"(last {len(shape_hits)} steps)")
            shape_hits.clear()
        _save_state(ckpt, {"step": step, "tower": tower.state_dict(), "head": head.state_dict(),
                           "opt": opt.state_dict()})

    _run_stage(f"{name} (tower, patch + pooled labels)", steps, start, step_fn, save_fn)
    _cache_tower(tower, cache, ckpt)
