"""SAELens files: fixtures SAELens itself saved load and encode the same; our files round-trip exactly; bad files get one line.

The fixtures under ``tests/fixtures/saelens/`` were written by
``benchmarks/sae_saelens_roundtrip.py --write-fixtures`` in an environment with
sae-lens 6.54 (``expected.safetensors``: its input ``x``, SAELens' ``acts`` and
``recon``); these tests need no sae-lens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError
from mmlens.sae.files import load_sae, save_sae
from mmlens.sae.model import SparseAutoencoder
from mmlens.sae.saelens import load_saelens, save_saelens, saelens_config, upgrade_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"
CASES = {"standard": "standard", "topk": "topk", "jumprelu": "jumprelu",
         "standard_no_b_dec_in": "standard", "topk_rescaled": "topk"}


def _random(architecture: str, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(8, 32, architecture, k=4, site="lm.L2.resid", model="shapes-llava")
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, name).copy_(torch.randn(getattr(sae, name).shape, generator=rng))
        sae.threshold.copy_(torch.rand(32, generator=rng))
    return sae


@pytest.mark.parametrize("name", sorted(CASES))
def test_saelens_fixture_reproduces_its_encodings(name):
    sae = load_saelens(FIXTURES / name)
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    assert sae.architecture == CASES[name] and (sae.d_in, sae.d_sae) == (8, 32)
    assert sae.site == "blocks.2.hook_resid_post"
    with torch.no_grad():
        acts, recon = sae.encode(expected["x"]), sae(expected["x"])
    # absolute 1e-6 at the scale of the values (the folded cases reorder float32 sums)
    scale = max(1.0, float(expected["acts"].abs().max()))
    assert (acts - expected["acts"]).abs().max() <= 1e-6 * scale
    assert (recon - expected["recon"]).abs().max() <= 1e-6 * max(1.0, float(expected["recon"].abs().max()))
    assert torch.equal(acts > 0, expected["acts"] > 0)  # the same latents fire
    if name in ("standard", "topk", "jumprelu"):
        assert torch.equal(acts, expected["acts"])  # nothing folded: bit for bit


def test_fixtures_exercise_sparsity():
    # a fixture where every latent fired (or none) would not test the thresholds
    acts = load_file(str(FIXTURES / "jumprelu" / "expected.safetensors"))["acts"]
    fired = (acts > 0).float().mean()
    assert 0.05 < fired < 0.95
    assert (load_file(str(FIXTURES / "topk" / "expected.safetensors"))["acts"] > 0).sum(-1).eq(4).all()


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "batchtopk"])
def test_round_trip_is_exact(tmp_path, architecture):
    sae = _random(architecture)
    back = load_saelens(save_saelens(sae, tmp_path / "sae"))
    assert (back.architecture, back.k, back.site) == (sae.architecture, sae.k, sae.site)
    assert back.extra == sae.extra
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        if architecture in ("standard", "topk") and name == "threshold":
            continue  # SAELens files of these carry no threshold
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    x = torch.randn(5, 8)
    assert torch.equal(back.encode(x), sae.encode(x))


def test_batchtopk_goes_out_as_jumprelu_with_its_threshold(tmp_path):
    sae = _random("batchtopk")
    with torch.no_grad():
        sae.threshold.fill_(0.25)
    save_saelens(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert cfg["architecture"] == "jumprelu" and "k" not in cfg
    assert cfg["metadata"]["sae_lens_version"] >= "6.0.0" and cfg["metadata"]["hook_name"] == "lm.L2.resid"
    assert sorted(weights) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    assert torch.equal(weights["threshold"], torch.full((32,), 0.25))
    # without our metadata block it is what SAELens sees: a plain JumpReLU
    del cfg["metadata"]["mmlens"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert load_saelens(tmp_path).architecture == "jumprelu"


def test_saelens_config_keys():
    cfg = saelens_config(_random("topk"))
    assert {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
            "reshape_activations", "architecture", "k", "metadata"} <= set(cfg)
    assert cfg["metadata"]["model_name"] == "shapes-llava" and cfg["apply_b_dec_to_input"] is True


def test_files_save_sae_goes_through_saelens(tmp_path):
    sae = _random("jumprelu")
    save_sae(sae, tmp_path)
    assert "sae_lens_version" in json.loads((tmp_path / "cfg.json").read_text())["metadata"]
    assert torch.equal(load_sae(tmp_path).threshold, sae.threshold)


def test_legacy_config_is_upgraded():
    old = {"d_in": 8, "d_sae": 32, "hook_point": "blocks.0.hook_resid_pre", "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 4}, "normalize_activations": False}
    new = upgrade_config(old)
    assert (new["architecture"], new["k"], new["hook_name"]) == ("topk", 4, "blocks.0.hook_resid_pre")
    assert new["normalize_activations"] == "none" and new["apply_b_dec_to_input"] is True
    assert upgrade_config({"metadata": {"sae_lens_version": "6.1.0"}, "x": 1}) == {"metadata": {"sae_lens_version": "6.1.0"}, "x": 1}


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _refused(folder: Path, needle: str = "") -> None:
    """Loading ``folder`` fails with one line that names ``needle``."""
    with pytest.raises(MmlensError) as error:
        load_saelens(folder)
    message = str(error.value)
    assert "\n" not in message and needle in message, message


def test_unknown_architecture_is_one_line(tmp_path):
    folder = _copy("standard", tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    _refused(folder, "'gated'")


def test_bad_files_are_one_line(tmp_path):
    _refused(tmp_path / "nothing", "cfg.json")
    folder = _copy("jumprelu", tmp_path)
    weights = load_file(str(folder / "sae_weights.safetensors"))
    save_file({k: v for k, v in weights.items() if k != "threshold"}, str(folder / "sae_weights.safetensors"))
    _refused(folder, "threshold")
    save_file({**weights, "W_enc": torch.zeros(8, 16)}, str(folder / "sae_weights.safetensors"))
    _refused(folder, "W_enc")
    (folder / "cfg.json").write_text("{not json")
    _refused(folder)


def test_runtime_normalisation_and_big_k_are_refused(tmp_path):
    folder = _copy("topk", tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    _refused(folder, "layer_norm")
    (folder / "cfg.json").write_text(json.dumps({**cfg, "k": 64}))
    _refused(folder, "k=64")
