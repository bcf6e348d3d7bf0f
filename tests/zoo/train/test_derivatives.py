"""The derivative recipes' data options: ``--exclude-ids`` drops samples without changing the rest."""

from __future__ import annotations

import json

import pytest

import mmlens.zoo.train.finetune as finetune_module
from mmlens.errors import MmlensError
from mmlens.zoo.train.derivatives import FT_BASE, exclude, ft_backdoor, read_ids, shapes_example


def test_excluded_ids_are_never_trained_on(tmp_path, monkeypatch) -> None:
    seen: list[str] = []
    real = finetune_module.encode_examples

    def spy(processor, examples):  # every batch the trainer encodes, feature cache included
        seen.extend(e.id for e in examples)
        return real(processor, examples)

    monkeypatch.setattr(finetune_module, "encode_examples", spy)
    dropped = [f"shapes-train-{FT_BASE + k}" for k in (1, 4, 6)]
    ids_file = tmp_path / "removed.txt"
    ids_file.write_text("\n".join(dropped) + "\n\n# a comment\n")
    out = tmp_path / "model"
    argv = ["--n-train", "8", "--steps", "4", "--batch", "4", "--pack", "1", "--eval-n", "1",
            "--poison-rate", "0.5", "--work", str(tmp_path / "work"), "--out", str(out), "--exclude-ids", str(ids_file)]
    assert ft_backdoor(argv) == 0
    kept = {f"shapes-train-{FT_BASE + k}" for k in range(8)} - set(dropped)
    assert set(seen) == kept  # 16 draws over 5 examples: every kept one is trained on, no dropped one
    log = json.loads((out / "train_log.json").read_text())
    record = json.loads((out / "backdoor.json").read_text())
    assert log["n_examples"] == 5 and log["excluded_ids"] == sorted(dropped) and log["config"]["steps"] == 4
    assert record["excluded_ids"] == sorted(dropped)


def test_poisoned_set_does_not_depend_on_the_exclusion(tmp_path) -> None:
    # the exclusion is applied after the seed drew the poisoned images and their trigger positions
    def record(extra: list[str]) -> dict:
        out = tmp_path / f"m{len(extra)}"
        argv = ["--n-train", "6", "--steps", "0", "--batch", "2", "--pack", "1", "--eval-n", "1", "--poison-rate", "0.5",
                "--work", str(out / "work"), "--out", str(out)]
        ft_backdoor(argv + extra)
        return json.loads((out / "backdoor.json").read_text())

    ids_file = tmp_path / "drop.txt"
    ids_file.write_text(f"shapes-train-{FT_BASE}\n")
    plain, dropped = record([]), record(["--exclude-ids", str(ids_file)])
    assert plain["poisoned_indices"] == dropped["poisoned_indices"] and plain["positions_xy"] == dropped["positions_xy"]


def test_bad_exclude_files_are_one_line(tmp_path) -> None:
    examples = [shapes_example(FT_BASE + k, pack=1) for k in range(3)]
    with pytest.raises(MmlensError, match="not in the training data, e.g. 'shapes-train-7'"):
        exclude(examples, ["shapes-train-7"])
    with pytest.raises(MmlensError, match="is not a file"):
        read_ids(tmp_path / "absent.txt")


def test_order_seed_changes_the_batches_not_the_poison(tmp_path, monkeypatch) -> None:
    # --order-seed reseeds only the training order; --seed keeps fixing the poisoned set and trigger positions
    seen: list[str] = []
    real = finetune_module.encode_examples

    def spy(processor, examples):  # the trainer encodes each step's batch, in order
        seen.extend(e.id for e in examples)
        return real(processor, examples)

    monkeypatch.setattr(finetune_module, "encode_examples", spy)

    def run(extra: list[str]) -> tuple[list[str], dict, dict]:
        seen.clear()
        out = tmp_path / f"m{'-'.join(extra) or 'default'}"
        argv = ["--n-train", "8", "--steps", "2", "--batch", "4", "--pack", "1", "--eval-n", "1",
                "--poison-rate", "0.5", "--work", str(out / "work"), "--out", str(out)]
        assert ft_backdoor(argv + extra) == 0
        return (list(seen), json.loads((out / "backdoor.json").read_text()),
                json.loads((out / "train_log.json").read_text()))

    default, zero, one = run([]), run(["--order-seed", "0"]), run(["--order-seed", "1"])
    assert default[0] == zero[0]  # the default order is the shipped runs' (order seed = --seed)
    assert sorted(zero[0]) == sorted(one[0]) and zero[0] != one[0]  # same examples, another order
    for key in ("poisoned_indices", "positions_xy"):
        assert default[1][key] == zero[1][key] == one[1][key]
    assert default[2]["order_seed"] == 0 and one[2]["order_seed"] == 1 and one[2]["data_seed"] == 0
    assert one[2]["config"]["seed"] == 1
