"""Steering vectors: mean differences, saving, where they are added, and bad input."""

import pytest
import torch

import mmlens
from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError
from mmlens.hooks import capture
from mmlens.represent.concepts import EMBED, activations, object_patches
from mmlens.represent.steering import SteeringVector, answers, mean_difference, project, shift_vectors, steer


@pytest.fixture(scope="module")
def shapes_llava() -> mmlens.Model:
    return mmlens.load("shapes-llava")


def _colour(answer: str, n: int, split: str = "val") -> list:
    out, i = [], 0
    while len(out) < n:
        s = make_sample(split, i, "colour")
        i += 1
        if s.answer == answer:
            out.append(s)
    return out


def test_mean_difference_and_round_trip(tmp_path):
    v = mean_difference({0: torch.zeros(4, 3), 2: torch.ones(2, 3)}, {0: torch.ones(5, 3), 2: torch.ones(3, 3)},
                        {"from": "a"})
    assert v.vectors[0].tolist() == [1.0, 1.0, 1.0] and v.vectors[2].abs().sum() == 0
    back = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    assert back.layers == [0, 2] and back.metadata == {"from": "a"}
    assert torch.equal(back.vectors[0], v.vectors[0])
    with pytest.raises(MmlensError, match="layers"):
        mean_difference({0: torch.zeros(2, 3)}, {1: torch.zeros(2, 3)})


def test_loading_a_foreign_file_gets_one_line(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(MmlensError, match="not a steering vector"):
        SteeringVector.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(MmlensError, match="not a safetensors"):
        SteeringVector.load(tmp_path / "junk.safetensors")
    with pytest.raises(MmlensError, match="no steering vector"):
        SteeringVector.load(tmp_path / "absent.safetensors")


def test_tokens_choose_where_the_vector_lands(tiny_llama):
    batch = tiny_llama.prepare(["a red circle and", "blue"])
    width = tiny_llama.hf.config.hidden_size
    v = SteeringVector({0: torch.ones(width)})
    with torch.no_grad(), capture(tiny_llama, "lm.L0.resid") as plain:
        tiny_llama.forward(batch)
    base = plain["lm.L0.resid"]
    for tokens, rows in (("all", slice(None)), ("prompt-last", -1)):
        with torch.no_grad(), steer(tiny_llama, v, 2.0, tokens), capture(tiny_llama, "lm.L0.resid") as got:
            tiny_llama.forward(batch)
        diff = got["lm.L0.resid"] - base
        assert torch.allclose(diff[:, rows], torch.full_like(diff[:, rows], 2.0), atol=1e-5)
        if tokens == "prompt-last":
            assert diff[:, :-1].abs().max() < 1e-6
    with torch.no_grad(), steer(tiny_llama, v, 1.0, "generated"), capture(tiny_llama, "lm.L0.resid") as gen:
        tiny_llama.generate(batch, max_new_tokens=3)
    steps = gen.steps("lm.L0.resid")
    assert torch.allclose(steps[0], base, atol=1e-5)  # the prompt call is left alone
    positions = [torch.tensor([1]), torch.tensor([2, 3])]
    with torch.no_grad(), steer(tiny_llama, v, 1.0, positions), capture(tiny_llama, "lm.L0.resid") as at:
        tiny_llama.forward(batch)
    changed = (at["lm.L0.resid"] - base).abs().sum(-1) > 1e-4
    assert changed[0].nonzero().flatten().tolist() == [1] and changed[1].nonzero().flatten().tolist() == [2, 3]


def test_wrong_width_layer_or_tokens_get_one_line(tiny_llama):
    with pytest.raises(MmlensError, match="width 7 cannot steer lm.L0.resid"):
        with steer(tiny_llama, SteeringVector({0: torch.ones(7)})):
            pass
    width = tiny_llama.hf.config.hidden_size
    with pytest.raises(MmlensError, match="has layers"):
        with steer(tiny_llama, SteeringVector({99: torch.ones(width)})):
            pass
    with pytest.raises(MmlensError, match="unknown tokens"):
        with steer(tiny_llama, SteeringVector({0: torch.ones(width)}), tokens="first"):
            pass


def test_red_to_blue_at_the_answer_position_flips_red_answers(shapes_llava):
    red, blue = _colour("red", 12, "train"), _colour("blue", 12, "train")
    v = mean_difference(activations(shapes_llava, red, [2]), activations(shapes_llava, blue, [2]))
    probe = _colour("red", 8)
    assert answers(shapes_llava, probe) == ["red"] * 8
    assert answers(shapes_llava, probe, v, scale=1.0).count("blue") >= 7


def test_red_to_blue_on_one_objects_patches(shapes_llava):
    def objects(colour, n):
        samples, where, i = [], [], 0
        while len(samples) < n:
            s = make_sample("train", i)
            i += 1
            hit = [o for o in s.objects if o.colour == colour]
            if hit:
                samples.append(s)
                where.append(object_patches(hit[0], min_cover=0.01))
        return samples, where
    (rs, rw), (bs, bw) = objects("red", 12), objects("blue", 12)
    v = mean_difference(activations(shapes_llava, rs, [EMBED], rw), activations(shapes_llava, bs, [EMBED], bw))
    probe = _colour("red", 6)
    where = [object_patches(s.objects[s.target_objects[0]], min_cover=0.01) for s in probe]
    assert answers(shapes_llava, probe, v, 1.0, tokens=where).count("blue") >= 5


def test_shift_vectors_between_identical_models_are_zero(shapes_llava):
    shift = shift_vectors(shapes_llava, shapes_llava, _colour("red", 3), [1, 3])
    assert shift.metadata["kind"] == "shift" and all(v.abs().max() < 1e-5 for v in shift.vectors.values())
    with pytest.raises(MmlensError, match="no samples"):
        shift_vectors(shapes_llava, shapes_llava, [], [1])


def test_project_keeps_the_part_inside_the_span():
    v = SteeringVector({0: torch.tensor([1.0, 2.0, 3.0, 4.0])}, {"kind": "shift"})
    rows = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])  # span: the first two axes, not orthonormal
    p = project(v, {0: rows})
    assert torch.allclose(p.vectors[0], torch.tensor([1.0, 2.0, 0.0, 0.0]), atol=1e-5)
    assert p.metadata == {"kind": "shift", "projected": "yes"}
    with pytest.raises(MmlensError, match="width 3 for a vector of width 4"):
        project(v, {0: torch.ones(2, 3)})
    with pytest.raises(MmlensError, match="no directions for layer 0"):
        project(v, {1: rows})


def test_conditional_steering_touches_only_rows_answered_red(shapes_llava):
    width = shapes_llava.hf.config.get_text_config().hidden_size
    red, blue = _colour("red", 3), _colour("blue", 3)
    mixed = [red[0], blue[0], red[1], blue[1], red[2], blue[2]]
    green = _colour("green", 3)
    away = mean_difference(activations(shapes_llava, blue + red, [2]), activations(shapes_llava, green, [2]))
    plain = answers(shapes_llava, mixed, away, 1.5)
    gated = answers(shapes_llava, mixed, away, 1.5, only_when="red")
    assert plain.count("green") >= 5  # ungated, the vector moves red and blue answers alike ...
    assert gated[::2] == plain[::2] and gated[1::2] == ["blue"] * 3  # ... gated, only the rows answered red
    zero = SteeringVector({2: torch.zeros(width)})
    assert answers(shapes_llava, mixed, zero, only_when="purple") == answers(shapes_llava, mixed)
