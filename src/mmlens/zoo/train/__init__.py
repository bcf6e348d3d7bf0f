"""Training of the zoo's models: ``python -m mmlens.zoo.train``.

- ``python -m mmlens.zoo.train --seed N [--backdoor] [...]`` trains
  ``shapes-llava`` from scratch in two stages (:mod:`.shapes`);
- ``python -m mmlens.zoo.train --recipe NAME [...]`` runs a named recipe
  (:mod:`.recipes`), e.g. the fine-tuned derivatives of ``shapes-llava``,
  most of them through the generic trainer :func:`.finetune.finetune`.

Every run is scheduled by steps, seeded, and resumable from the checkpoints
in its work directory.

Example:
    >>> from mmlens.zoo.train import TrainConfig, lr_factor
    >>> TrainConfig().seed, lr_factor(0, 100, 10)
    (0, 0.1)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mmlens.zoo.train.common import (
    _fmt, _log, _optimise, _run_stage, _save_state, init_for_training, lr_factor,
)
from mmlens.zoo.train.recipes import RECIPES, run_recipe
from mmlens.zoo.train.shapes import (
    SEED_STRIDE, STAGE2_OFFSET, PatchHead, TrainConfig, _global_labels, _packed_text, _poisoned,
    _stage1_batch, _stage2_batch, _tower_tokens, train, train_stage1, train_stage2,
)
from mmlens.zoo.train.shapes import main as train_shapes_main


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: ``--recipe NAME [...]`` or the shapes-llava flags.

    Example:
        >>> main(["--recipe", "ft-swap", "--help"])  # doctest: +SKIP
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--recipe" in args:
        i = args.index("--recipe")
        if i + 1 >= len(args):
            from mmlens.errors import MmlensError
            raise MmlensError(f"--recipe needs a name; known: {', '.join(sorted(RECIPES))}")
        return run_recipe(args[i + 1], args[:i] + args[i + 2:])
    return train_shapes_main(args)


__all__ = [
    "PatchHead", "RECIPES", "SEED_STRIDE", "STAGE2_OFFSET", "TrainConfig", "init_for_training", "lr_factor",
    "main", "run_recipe", "train", "train_shapes_main", "train_stage1", "train_stage2",
    "_fmt", "_global_labels", "_log", "_optimise", "_packed_text", "_poisoned", "_run_stage", "_save_state",
    "_stage1_batch", "_stage2_batch", "_tower_tokens",
]
