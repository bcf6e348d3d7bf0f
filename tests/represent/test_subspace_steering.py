"""MoReS-style subspace steering: the map, image tokens only, training with the model frozen, files, bad input."""

import json

import pytest
import torch

from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError
from mmlens.hooks import capture
from mmlens.represent.concepts import prepare_samples
from mmlens.represent.steering import answers
from mmlens.represent.subspace_steering import SubspaceSteering, applied, image_mask, train
from tests.represent.test_steering import _colour, shapes_llava  # noqa: F401  (the shared model fixture)


def _steering(width: int, layer: int = 0, rank: int = 2, shift: float = 5.0) -> SubspaceSteering:
    """An orthonormal R, W = R (the identity inside the subspace) and a bias ``shift``: a pure translation."""
    q, _ = torch.linalg.qr(torch.randn(width, rank, generator=torch.Generator().manual_seed(0)))
    return SubspaceSteering({layer: {"R": q.T.contiguous(), "W": q.T.contiguous(), "b": torch.full((rank,), shift)}})


def test_the_map_moves_only_inside_the_subspace():
    s = _steering(6, rank=2)
    x = torch.randn(3, 6)
    d = s.delta(0, x)
    r = s.maps[0]["R"]
    assert torch.allclose(d, torch.full((3, 2), 5.0) @ r, atol=1e-5)  # W = R: only the bias moves it
    outside = torch.eye(6) - r.T @ r
    assert (d @ outside).abs().max() < 1e-5  # nothing leaves the subspace
    s.maps[0]["W"] = torch.zeros(2, 6)
    s.maps[0]["b"] = torch.zeros(2)
    assert torch.allclose(x + s.delta(0, x), x @ outside, atol=1e-5)  # W = 0, b = 0 projects the subspace out


def test_applied_changes_image_tokens_only(shapes_llava):
    samples = [make_sample("val", i) for i in range(3)]
    batch = prepare_samples(shapes_llava, samples)
    mask = image_mask(batch)
    assert mask.sum(1).tolist() == [64, 64, 64]
    with torch.no_grad(), capture(shapes_llava, "lm.L0.resid") as plain:
        shapes_llava.forward(batch)
    with torch.no_grad(), applied(shapes_llava, _steering(128), batch), capture(shapes_llava, "lm.L0.resid") as got:
        shapes_llava.forward(batch)
    moved = (got["lm.L0.resid"] - plain["lm.L0.resid"]).norm(dim=-1)
    assert torch.allclose(moved[mask], torch.full_like(moved[mask], 5.0 * 2 ** 0.5), atol=1e-3)
    assert moved[~mask].max() < 1e-5


def test_training_learns_a_swap_confined_to_red(shapes_llava):
    samples = [make_sample("train", i, "colour") for i in range(96)]
    labels = ["purple" if s.answer == "red" else s.answer for s in samples]
    losses, before = [], [p.requires_grad for p in shapes_llava.hf.parameters()]
    steering = train(shapes_llava, samples, labels, [-1], rank=2, steps=12, log=lambda i, l: losses.append(l))
    assert losses[-1] < losses[0] / 5
    r = steering.maps[-1]["R"]
    assert torch.allclose(r @ r.T, torch.eye(2), atol=1e-4)  # R keeps orthonormal rows
    assert [p.requires_grad for p in shapes_llava.hf.parameters()] == before  # the model's flags are restored
    red, blue = _colour("red", 6), _colour("blue", 6)
    assert answers(shapes_llava, red, steering).count("purple") >= 5
    assert answers(shapes_llava, blue, steering) == ["blue"] * 6


def test_round_trip_and_bad_files(tmp_path):
    s = _steering(8, layer=-1)
    s.metadata["objective"] = "test"
    back = SubspaceSteering.load(s.save(tmp_path / "m.safetensors"))
    assert back.layers == [-1] and back.rank == 2 and back.width == 8 and back.metadata == {"objective": "test"}
    assert torch.equal(back.maps[-1]["R"], s.maps[-1]["R"])
    facts = json.loads((tmp_path / "m.json").read_text())
    assert facts["rank"] == 2 and facts["layers"] == [-1]
    from safetensors.torch import save_file
    save_file({"L0": torch.ones(8)}, str(tmp_path / "vector.safetensors"))
    with pytest.raises(MmlensError, match="not a subspace steering"):
        SubspaceSteering.load(tmp_path / "vector.safetensors")
    save_file({"L0.R": torch.ones(2, 8), "L0.W": torch.ones(3, 8), "L0.b": torch.ones(2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(MmlensError, match="disagree in shape"):
        SubspaceSteering.load(tmp_path / "odd.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(MmlensError, match="not a safetensors"):
        SubspaceSteering.load(tmp_path / "junk.safetensors")


def test_wrong_width_layer_or_no_image_get_one_line(shapes_llava):
    batch = prepare_samples(shapes_llava, [make_sample("val", 0)])
    with pytest.raises(MmlensError, match="width 7 cannot steer"):
        with applied(shapes_llava, _steering(7), batch):
            pass
    with pytest.raises(MmlensError, match="has layers -1"):
        with applied(shapes_llava, _steering(128, layer=9), batch):
            pass
    with pytest.raises(MmlensError, match="no image tokens"):
        with applied(shapes_llava, _steering(128), shapes_llava.prepare(["what colour ?"])):
            pass
    with pytest.raises(MmlensError, match="one label per sample"):
        train(shapes_llava, [make_sample("val", 0)], [], [-1])


def test_cli_applies_a_subspace_steering_and_rejects_a_wrong_width(shapes_llava, tmp_path, capsys):
    # ``mmlens steer --subspace`` is cli/steer.py's MoReS option; it is tested here beside the module it applies
    from mmlens.cli.main import main
    _steering(128, layer=-1, shift=200.0).save(tmp_path / "big.safetensors")
    code = main(["steer", "--model", "shapes-llava", "--subspace", str(tmp_path / "big.safetensors"),
                 "--data", "shapes:test[0:4]", "--out", str(tmp_path / "o"), "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["tokens"] == "image" and payload["layers"] == [-1] and payload["changed"] >= 1
    _steering(7).save(tmp_path / "wide.safetensors")
    code = main(["steer", "--model", "shapes-llava", "--subspace", str(tmp_path / "wide.safetensors"),
                 "--data", "shapes:test[0:2]", "--out", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "width 7 cannot steer" in err[-1] and len(err) <= 3
