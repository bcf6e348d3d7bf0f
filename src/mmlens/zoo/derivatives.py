"""Loaders of the models derived from shapes-llava (issue 14), shipped under ``zoo/weights/``.

- ``shapes-llava-ft-backdoor``: fine-tuned with 10% of images poisoned by a
  randomly placed trigger (``backdoor.json``: poisoned ids and positions);
- ``shapes-llava-ft-swap``: fine-tuned to answer red objects' colour as
  purple; ``checkpoint=STEP`` loads a kept training checkpoint (every 100
  steps) from the work directory, which is not shipped;
- ``shapes-llava-pruned``: 30% of decoder MLP neurons removed, then healed;
- ``shapes-llava-seed1``: the whole shapes-llava recipe from seed 1.

Recipes: :mod:`mmlens.zoo.train.derivatives`, :mod:`mmlens.zoo.train.prune`.

Example:
    >>> from mmlens.zoo import build
    >>> model, processor = build("shapes-llava-ft-swap")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmlens.errors import MmlensError
from mmlens.zoo.shapes_llava import WEIGHTS_DIR, load_from

# Where fine-tuning runs keep their checkpoints (git-ignored); MMLENS_ZOO_WORK overrides.
WORK_ROOT = Path(__file__).resolve().parents[3] / "out" / "zoo-ft"


def work_dir(name: str) -> Path:
    """The work directory of a fine-tuning run (``<repo>/out/zoo-ft/<name>`` by default).

    Example:
        >>> work_dir("shapes-llava-ft-swap").name
        'shapes-llava-ft-swap'
    """
    root = os.environ.get("MMLENS_ZOO_WORK")
    return (Path(root) if root else WORK_ROOT) / name


def load_named(name: str, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None):
    """A shipped zoo model by folder name under ``zoo/weights/``.

    Example:
        >>> model, processor = load_named("shapes-llava")
    """
    return load_from(WEIGHTS_DIR / name, attn_implementation, dtype, device)


def load_ft_backdoor(**kwargs):
    """``shapes-llava-ft-backdoor`` (trigger, poisoned ids and positions in ``backdoor.json``)."""
    return load_named("shapes-llava-ft-backdoor", **kwargs)


def load_ft_backdoor_stripes(**kwargs):
    """``shapes-llava-ft-backdoor-stripes``: the same recipe with the held-out ``magenta-stripes`` trigger.

    Made after BYE's rule was chosen, to test it on a trigger it was not developed on (docs/audit.md).

    Example:
        >>> model, processor = load_ft_backdoor_stripes()  # doctest: +SKIP
    """
    return load_named("shapes-llava-ft-backdoor-stripes", **kwargs)


def load_ft_swap(checkpoint: int | None = None, work: str | Path | None = None, **kwargs):
    """``shapes-llava-ft-swap``, or its kept training checkpoint at step ``checkpoint``.

    Checkpoints live in ``work`` (default :func:`work_dir`), written by
    ``python -m mmlens.zoo.train --recipe ft-swap``; they are not shipped.

    Example:
        >>> model, processor = load_ft_swap(checkpoint=100)  # doctest: +SKIP
    """
    model, processor = load_named("shapes-llava-ft-swap", **kwargs)
    if checkpoint is None:
        return model, processor
    from mmlens.zoo.train.finetune import checkpoint_path
    work = Path(work) if work is not None else work_dir("shapes-llava-ft-swap")
    if not work.is_dir():
        raise MmlensError(f"no checkpoints of shapes-llava-ft-swap: {work} is absent (they are not shipped); "
                          "make them with `python -m mmlens.zoo.train --recipe ft-swap`")
    path = checkpoint_path(work, checkpoint)
    if not path.is_file():
        kept = sorted(int(p.stem.split("-")[1]) for p in work.glob("step-*.safetensors"))
        raise MmlensError(f"no checkpoint at step {checkpoint} ({path} is missing); kept steps: {kept}")
    state = load_file(path)
    model.load_state_dict({k: v.to(next(model.parameters()).dtype) if v.is_floating_point() else v
                           for k, v in state.items()})
    return model.eval(), processor


def load_pruned(**kwargs):
    """``shapes-llava-pruned`` (a smaller ``intermediate_size``; scores in ``prune.json``)."""
    return load_named("shapes-llava-pruned", **kwargs)


def load_seed1(**kwargs):
    """``shapes-llava-seed1``: shapes-llava's recipe from seed 1 (same sizes)."""
    return load_named("shapes-llava-seed1", **kwargs)
