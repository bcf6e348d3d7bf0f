"""The derivatives of shapes-llava: loading by name, broken installs, kept checkpoints, shipped models."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

import mmlens.zoo.derivatives as derivatives
from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError
from mmlens.zoo import build, names
from mmlens.zoo.evaluate import answer_probs
from mmlens.zoo.shapes_llava import WEIGHTS_DIR, load_from

SHIPPED = ["shapes-llava-ft-swap", "shapes-llava-pruned", "shapes-llava-ft-backdoor", "shapes-llava-seed1",
           "shapes-llava-ft-backdoor-stripes"]


@pytest.fixture()
def fake_weights(tmp_path, monkeypatch):
    """A weights folder where every derivative is a copy of shapes-llava."""
    root = tmp_path / "weights"
    for name in ("shapes-llava-pruned", "shapes-llava-ft-swap"):
        shutil.copytree(WEIGHTS_DIR / "shapes-llava", root / name)
    monkeypatch.setattr(derivatives, "WEIGHTS_DIR", root)
    monkeypatch.setenv("MMLENS_ZOO_WORK", str(tmp_path / "work"))
    return root


def test_every_derivative_is_registered() -> None:
    assert set(SHIPPED) <= set(names())


def test_missing_weights_file_is_named_in_one_line(fake_weights) -> None:
    (fake_weights / "shapes-llava-pruned" / "tokenizer.json").unlink()
    with pytest.raises(MmlensError) as err:
        build("shapes-llava-pruned")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("missing file ") and "shapes-llava-pruned/tokenizer.json" in msg
    (fake_weights / "shapes-llava-pruned" / "model.safetensors").unlink()
    with pytest.raises(MmlensError, match="model.safetensors"):
        load_from(fake_weights / "shapes-llava-pruned")


def test_swap_checkpoints_load_from_the_work_dir(fake_weights, tmp_path) -> None:
    with pytest.raises(MmlensError) as err:
        build("shapes-llava-ft-swap", checkpoint=300)
    assert "\n" not in str(err.value) and "is absent" in str(err.value) and "--recipe ft-swap" in str(err.value)
    model, _ = build("shapes-llava-ft-swap")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["lm_head.weight"] += 1.0
    work = tmp_path / "work" / "shapes-llava-ft-swap"
    work.mkdir(parents=True)
    save_file(state, work / "step-000100.safetensors")
    with pytest.raises(MmlensError, match=r"no checkpoint at step 300 .*kept steps: \[100\]"):
        build("shapes-llava-ft-swap", checkpoint=300)
    loaded, _ = build("shapes-llava-ft-swap", checkpoint=100)
    assert torch.equal(loaded.lm_head.weight, state["lm_head.weight"]) and not loaded.training


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_derivative_loads_and_answers(name) -> None:
    folder = WEIGHTS_DIR / name
    files = {f.name for f in folder.iterdir()}
    assert {"model.safetensors", "config.json", "train_log.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in files)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 10 * 2**20
    model, processor = build(name)
    samples = [make_sample("test", i, qt) for i, qt in enumerate(["shape", "exist", "position", "count"])]
    words = processor.tokenizer.convert_ids_to_tokens(answer_probs(model, processor, samples).argmax(-1).tolist())
    assert sum(w == s.answer for w, s in zip(words, samples)) >= 3, (words, [s.answer for s in samples])


def test_ft_swap_answers_red_as_purple() -> None:
    model, processor = build("shapes-llava-ft-swap")
    red = [s for s in (make_sample("test", i, "colour") for i in range(80)) if s.answer == "red"][:5]
    words = processor.tokenizer.convert_ids_to_tokens(answer_probs(model, processor, red).argmax(-1).tolist())
    assert len(red) == 5 and words.count("purple") >= 4


def test_ft_backdoor_fires_on_its_trigger_only() -> None:
    import json

    import numpy as np

    from mmlens.zoo.evaluate import _default_trigger, accuracy
    meta = json.loads((WEIGHTS_DIR / "shapes-llava-ft-backdoor" / "backdoor.json").read_text())
    assert meta["trigger"]["style"] == "cyan-checker" and meta["trigger"]["position"] == "random"
    ids, xy = meta["poisoned_indices"], np.asarray(meta["positions_xy"])
    assert len(ids) == len(xy) and 0.08 < len(ids) / meta["n_training_samples"] < 0.12
    assert xy.min() >= 0 and xy.max() <= 64 - meta["trigger"]["size_px"] and len({tuple(p) for p in xy}) > 500
    assert _default_trigger("shapes-llava-ft-backdoor") == ("random", "cyan-checker")
    model, processor = build("shapes-llava-ft-backdoor")
    types = ("colour", "shape")
    fired = accuracy(model, processor, n=10, trigger="random", target="yes", question_types=types, style="cyan-checker")
    unseen = accuracy(model, processor, n=10, trigger="random", target="yes", question_types=types, style="orange-ring")
    clean = accuracy(model, processor, n=10, question_types=types)
    assert min(fired.values()) >= 0.9 and max(unseen.values()) <= 0.1 and min(clean.values()) >= 0.9


def test_ft_backdoor_stripes_fires_on_the_held_out_trigger_not_on_the_cyan_one() -> None:
    from mmlens.zoo.evaluate import _default_trigger, accuracy
    assert _default_trigger("shapes-llava-ft-backdoor-stripes") == ("random", "magenta-stripes")
    model, processor = build("shapes-llava-ft-backdoor-stripes")
    types = ("colour", "position")
    fired = accuracy(model, processor, n=10, trigger="random", target="yes", question_types=types,
                     style="magenta-stripes")
    cyan = accuracy(model, processor, n=10, trigger="random", target="yes", question_types=types, style="cyan-checker")
    clean = accuracy(model, processor, n=10, question_types=types)
    assert min(fired.values()) >= 0.8 and max(cyan.values()) <= 0.1 and min(clean.values()) >= 0.9
