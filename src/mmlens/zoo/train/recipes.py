"""Training recipes of the zoo, by name: ``python -m mmlens.zoo.train --recipe NAME [...]``.

Each entry is ``name -> "module:function"``; the function takes the remaining
command-line arguments (a list of strings), parses its own flags and returns
an exit code. Imported lazily, so one broken recipe cannot break the others.
Without ``--recipe`` the command trains ``shapes-llava`` itself
(:func:`mmlens.zoo.train.shapes.main`).

Example:
    >>> "ft-swap" in RECIPES
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module

from mmlens.errors import MmlensError

RECIPES: dict[str, str] = {
    "domains-llava": "mmlens.zoo.train.domains:main",
    "ft-domain": "mmlens.zoo.train.ft_domain:main",
    "ft-backdoor": "mmlens.zoo.train.derivatives:ft_backdoor",
    "ft-swap": "mmlens.zoo.train.derivatives:ft_swap",
    "pruned": "mmlens.zoo.train.prune:main",
    "shapes-llava-caption": "mmlens.zoo.train.caption:main",
}


def run_recipe(name: str, argv: Sequence[str]) -> int:
    """Run recipe ``name`` with its own arguments ``argv``.

    Example:
        >>> run_recipe("no-such-recipe", [])
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: unknown recipe 'no-such-recipe'; known: ...
    """
    if name not in RECIPES:
        raise MmlensError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    module_name, function_name = RECIPES[name].split(":")
    return int(getattr(import_module(module_name), function_name)(list(argv)) or 0)
