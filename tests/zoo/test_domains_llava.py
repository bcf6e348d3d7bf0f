"""domains-llava and shapes-llava-ft-domain: tokenizers, builders, the recipes, the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmlens.data import domains as world
from mmlens.errors import MmlensError
from mmlens.zoo import build, names
from mmlens.zoo.domains_llava import DOMAINS_DIR, FT_DOMAIN_DIR, _load, build_model, build_processor
from mmlens.zoo.evaluate import encode
from mmlens.zoo.shapes_llava import load, load_from
from mmlens.zoo.train import domains as recipe
from mmlens.zoo.train.ft_domain import domain_example, grow, grown_tokenizer


def test_names_are_registered() -> None:
    assert "shapes-llava-ft-domain" in names()


def test_processor_covers_the_union_vocabulary_and_matches_encode() -> None:
    p = build_processor(world.vocabulary())
    tok = p.tokenizer
    assert tok.convert_ids_to_tokens(tok("how many cells are on the slide ?")["input_ids"])[1:4] == \
        ["how", "many", "cells"]
    assert tok.unk_token_id not in tok(" ".join(world.vocabulary()))["input_ids"]
    samples = [world.make_sample(d, "test", 0) for d in world.NAMES]
    mine = encode(p, [np.asarray(s.image) for s in samples], [s.prompt for s in samples])
    ref = p(images=[s.image for s in samples], text=[s.prompt for s in samples], padding=True, return_tensors="pt")
    assert torch.equal(mine["input_ids"], ref["input_ids"])
    assert torch.allclose(mine["pixel_values"], ref["pixel_values"], atol=1e-5)


def test_build_model_sizes() -> None:
    m = build_model(build_processor(world.vocabulary()), layers=2, hidden=64, mlp=96)
    assert m.config.text_config.num_hidden_layers == 2
    assert m.model.language_model.layers[0].mlp.up_proj.weight.shape == (96, 64)
    assert m.lm_head.weight.shape[0] == len(world.vocabulary()) + 5


def test_stage1_head_masks_classes_a_slot_does_not_have() -> None:
    head = recipe.DomainHead(64)
    _, pooled = head(torch.randn(2, 64, 64))
    sizes = list(world.POOLED.values())
    k = sizes.index(2)
    assert (pooled[:, k, 2:] < -1e3).all() and (pooled[:, k, :2] > -1e3).all()


def test_tiny_recipe_trains_saves_and_reuses_its_stage1_tower(tmp_path: Path, capsys) -> None:
    args = ["--stage1-steps", "2", "--stage1-batch", "5", "--stage2-steps", "2", "--batch", "3",
            "--layers", "1", "--eval-n", "2", "--pool", "7", "--mix", "cells,maps", "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w")]
    assert recipe.main(args) == 0
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert set(log["val_accuracy"]) == set(world.NAMES)
    assert set(log["val_accuracy"]["maps"]) == {"orient", "field", "cross", "all"}
    model, processor = load_from(tmp_path / "m")
    assert model.config.text_config.num_hidden_layers == 1
    acc = recipe.evaluate(model, processor, n=2, domains=("cells",))
    assert 0.0 <= acc["cells"]["all"] <= 1.0
    assert log["config"]["mix"] == ["cells", "maps"]
    assert recipe.main(args) == 0  # a second run finds the cached tower
    assert "reusing" in capsys.readouterr().out
    with pytest.raises(MmlensError, match="unknown domain"):
        recipe.main(args + ["--mix", "x-rays"])


def test_feature_pool_repacks_each_epoch() -> None:
    cfg = recipe.DomainsConfig(pool=5, batch=4, pack=3)
    model = build_model(build_processor(world.vocabulary()), layers=1)
    pool = recipe.FeaturePool(model, build_processor(world.vocabulary()), cfg)
    assert tuple(pool.features.shape) == (5, 64, 64) and pool.features.dtype == torch.float16
    seen = pool.positions(0) + pool.positions(1)[:1]
    assert sorted(seen) == [0, 1, 2, 3, 4]  # one epoch is a permutation of the pool
    text, where, answers = pool.text(0, 0)
    assert text.startswith("<image>") and [text.split()[w] for w in where] == answers
    assert text.count("<image>") == 1 and len(set(text.split(" ? "))) == len(text.split(" ? "))


def test_missing_weights_say_which_file(tmp_path: Path) -> None:
    with pytest.raises(MmlensError, match="model.safetensors"):
        _load(tmp_path / "nothing", "domains-llava")


def test_grown_tokenizer_keeps_old_ids_and_grow_resizes_both_ends() -> None:
    model, processor = load()
    old = processor.tokenizer.get_vocab()
    tok = grown_tokenizer("cells")
    assert all(tok.convert_tokens_to_ids(w) == i for w, i in old.items())
    assert {"0", "5", "slide", "stained"} <= set(tok.get_vocab()) - set(old)
    before = model.lm_head.weight[:len(old)].clone()
    new_processor = grow(model, processor, "cells")
    n = len(new_processor.tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == n == model.lm_head.weight.shape[0]
    assert torch.equal(model.lm_head.weight[:len(old)], before)
    ex = domain_example("cells", 96_000_000, 2)
    assert len(ex.pairs) == 2 and not ex.pairs[1][0].startswith("<image>")


def test_shipped_ft_domain_keeps_shapes_and_reads_cells() -> None:
    from mmlens.zoo.evaluate import accuracy
    model, processor = build("shapes-llava-ft-domain")
    acc = accuracy(model, processor, n=40)
    assert min(acc.values()) >= 0.9, acc
    log = json.loads((FT_DOMAIN_DIR / "train_log.json").read_text())
    assert log["domain"] == "cells" and log["base"] == "shapes-llava"


def test_stage1_labels_give_shapes_patches_their_colour_and_shape() -> None:
    from mmlens.data.shapes import COLOURS, SHAPES
    cfg = recipe.DomainsConfig(stage1_batch=6)
    images, labels, _ = recipe.stage1_batch(cfg, 0)
    domains = [recipe.train_sample(j, cfg.mix).domain for j in range(6)]
    for j, d in enumerate(domains):
        colour, shape = labels[j, 3], labels[j, 4]
        if d == "shapes":
            objects = labels[j, 0] > 0
            assert ((colour > 0) == objects).all() and ((shape > 0) == objects).all()
            assert colour.max() <= len(COLOURS) and shape.max() <= len(SHAPES) and objects.any()
        else:
            assert (colour == -100).all() and (shape == -100).all()
    assert "shapes" in domains and "cells" in domains


def test_stage1b_continues_the_tower_on_its_own_images(tmp_path: Path, capsys) -> None:
    args = ["--stage1-steps", "1", "--stage1-batch", "4", "--stage1b-steps", "2", "--stage1b-mix", "shapes,cells",
            "--stage2-steps", "1", "--batch", "2", "--layers", "1", "--eval-n", "1", "--pool", "3",
            "--mix", "cells,maps", "--stage2-mix", "glyphs", "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w")]
    assert recipe.main(args) == 0
    towers = sorted(p.name for p in (tmp_path / "w").glob("*.safetensors"))
    assert len(towers) == 2 and any("-then2-sc-" in t for t in towers)  # both phases cached
    first = load_file(tmp_path / "w" / next(t for t in towers if "-then" not in t))
    second = load_file(tmp_path / "w" / next(t for t in towers if "-then" in t))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # stage 1b moved the tower
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert log["config"]["stage1b_mix"] == ["shapes", "cells"] and log["config"]["stage2_mix"] == ["glyphs"]
    capsys.readouterr()
    assert recipe.main(args) == 0  # the second run reuses the continued tower, not the first
    assert "-then2-sc-" in capsys.readouterr().out
    # stage 1b's images are not stage 1's
    _, a, _ = recipe.stage1_batch(recipe.DomainsConfig(stage1_batch=2), 0)
    _, b, _ = recipe.stage1_batch(recipe.DomainsConfig(stage1_batch=2), 0, recipe.MIX, recipe.STAGE1B_OFFSET)
    assert not torch.equal(a, b)


def test_recipe_rejects_overlapping_stage1_phases() -> None:
    with pytest.raises(MmlensError, match="overlap"):
        recipe.main(["--stage1-steps", "100000", "--stage1-batch", "48"])


def test_shipped_domains_llava_loads_and_reads_every_domain() -> None:
    folder = DOMAINS_DIR
    files = {f.name for f in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_log.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in files)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 10 * 2**20
    assert "domains-llava" in names()
    model, processor = build("domains-llava")
    acc = recipe.evaluate(model, processor, n=10)
    # measured on these 10 per type (the v5 weights of commit 2c3b912): shapes 0.90 (position 0.5,
    # every other type 1.0; chance about 0.3), glyphs 0.95, cells and maps 1.0. The v3 weights before
    # them scored shapes 0.68 here, so a shapes bar of 0.85 tells the two apart.
    assert acc["shapes"]["all"] >= 0.85 and acc["glyphs"]["all"] >= 0.9
    assert acc["cells"]["all"] >= 0.95 and acc["maps"]["all"] >= 0.95
