"""``python -m mmlens.zoo.train``: recipe dispatch and one-line errors."""

from __future__ import annotations

import runpy
import sys

import pytest

from mmlens.errors import MmlensError
from mmlens.zoo.train import RECIPES, TrainConfig, init_for_training, lr_factor, main, train  # noqa: F401
from mmlens.zoo.train.recipes import run_recipe


def test_every_recipe_points_at_a_function() -> None:
    from importlib import import_module
    for name, target in RECIPES.items():
        module, function = target.split(":")
        assert callable(getattr(import_module(module), function)), name


def test_unknown_recipe_is_one_line() -> None:
    with pytest.raises(MmlensError, match="unknown recipe 'nope'; known: .*ft-swap"):
        run_recipe("nope", [])
    with pytest.raises(MmlensError, match="--recipe needs a name"):
        main(["--recipe"])


def test_module_cli_reports_bad_recipe_in_one_line(monkeypatch, capsys) -> None:
    # ``python -m mmlens.zoo.train --recipe nope``, in process (a subprocess re-imports torch)
    monkeypatch.setattr(sys, "argv", ["mmlens.zoo.train", "--recipe", "nope"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("mmlens.zoo.train", run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().count("\n") == 0 and "unknown recipe 'nope'" in err


def test_recipe_help_lists_its_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--recipe", "ft-swap", "--help"])
    assert "--steps" in capsys.readouterr().out
