"""capture() and intervene(): reading, editing and differentiating named sites."""

import pytest
import torch

import mmlens
from mmlens.hooks import eager_attention, expand, resolve

PROMPTS = ["<image> what colour is the circle ?", "<image> shape ?"]


def run(model, batch):
    with torch.no_grad():
        return model.forward(batch).logits


@pytest.fixture(scope="module")
def images(request):
    from tests.conftest import noise_image

    return [[noise_image(64, 64, 1)], [noise_image(48, 80, 2)]]


def test_sites_expand_and_resolve(tiny_llava):
    names = expand(tiny_llava, "lm.L*.resid")
    assert names == [f"lm.L{i}.resid" for i in range(tiny_llava.n_layers)]
    assert resolve(tiny_llava, "lm.L1.neurons").module is tiny_llava.decoder_layers[1].mlp.down_proj
    with pytest.raises(mmlens.MmlensError):
        expand(tiny_llava, "lm.L99.resid")
    with pytest.raises(mmlens.MmlensError):
        resolve(tiny_llava, "lm.L0.banana")


def test_identity_intervention_changes_nothing_and_zeroing_does(tiny_llava, images):
    batch = tiny_llava.prepare(PROMPTS, images)
    clean = run(tiny_llava, batch)
    with mmlens.intervene(tiny_llava, {"lm.L*.resid": lambda x: x, "lm.L*.neurons": lambda x: x}):
        same = run(tiny_llava, batch)
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    for site in ["lm.L0.mlp", "lm.L1.attn", "lm.L0.neurons", "projector", "vision.L0.resid"]:
        with mmlens.intervene(tiny_llava, {site: torch.zeros_like}):
            zeroed = run(tiny_llava, batch)
        assert not torch.allclose(zeroed, clean), site
    assert torch.equal(run(tiny_llava, batch), clean)  # hooks are gone


def test_hooks_are_removed_when_the_body_raises(tiny_llava):
    module = tiny_llava.decoder_layers[0]
    before = (dict(module._forward_hooks), dict(module.mlp._forward_hooks))  # transformers may hold its own
    with pytest.raises(RuntimeError):
        with mmlens.capture(tiny_llava, "lm.L0.resid"), mmlens.intervene(tiny_llava, {"lm.L0.mlp": torch.zeros_like}):
            assert len(module._forward_hooks) == len(before[0]) + 1
            raise RuntimeError("boom")
    assert (dict(module._forward_hooks), dict(module.mlp._forward_hooks)) == before


def test_capture_shapes_and_attention_probabilities(tiny_llava, images):
    batch = tiny_llava.prepare(PROMPTS, images)
    before = tiny_llava.hf.config.text_config._attn_implementation
    with mmlens.capture(tiny_llava, ["lm.L*.resid", "lm.L0.attn_probs", "lm.L1.neurons", "lm.embed"]) as captured:
        logits = tiny_llava.forward(batch).logits
    batch_size, seq = batch.input_ids.shape
    assert captured["lm.L1.resid"].shape == (batch_size, seq, tiny_llava.hf.config.text_config.hidden_size)
    assert [site for site, _ in captured.items()] == captured.keys()
    assert all(torch.equal(value, captured[site]) for site, value in captured.items())
    probs = captured["lm.L0.attn_probs"]
    assert probs.shape[-2:] == (seq, seq)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert tiny_llava.hf.config.text_config._attn_implementation == before  # switched back
    # the last residual, normed and unembedded, is the model's output
    final = tiny_llava.module("lm_head")(tiny_llava.module(tiny_llava.adapter.final_norm)(captured["lm.L1.resid"]))
    torch.testing.assert_close(final, logits.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_rows_compute_what_they_compute_alone(tiny_llava, images, padding_side):
    batch = tiny_llava.prepare(PROMPTS, images, padding_side=padding_side)
    alone = tiny_llava.prepare(PROMPTS[1], images[1])
    with mmlens.capture(tiny_llava, "lm.L1.resid") as together, torch.no_grad():
        tiny_llava.forward(batch)
    with mmlens.capture(tiny_llava, "lm.L1.resid") as single, torch.no_grad():
        tiny_llava.forward(alone)
    real = batch.inputs["attention_mask"][1].bool()
    torch.testing.assert_close(together["lm.L1.resid"][1, real], single["lm.L1.resid"][0], rtol=1e-4, atol=1e-4)
    # the layout moves with the padding
    assert batch.layout.mask(mmlens.Modality.PAD)[1].sum() == (~real).sum()
    image_positions = batch.layout.image_positions(1)
    assert (batch.input_ids[1, image_positions] == tiny_llava.hf.config.image_token_id).all()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_gradients_at_sites_match_autograd(tiny_llava, images, padding_side):
    batch = tiny_llava.prepare(PROMPTS, images, padding_side=padding_side)
    with mmlens.capture(tiny_llava, ["lm.embed", "lm.L0.resid", "lm.L1.attn_probs"], grads=True) as captured:
        logits = tiny_llava.forward(batch).logits
        last = batch.inputs["attention_mask"].sum(-1) - 1 if padding_side == "right" else torch.tensor([-1, -1])
        target = logits[torch.arange(2), last].max(-1).values.sum()
        target.backward()
    for site in ["lm.embed", "lm.L0.resid", "lm.L1.attn_probs"]:
        grad = captured.grad(site)
        assert grad.shape == captured[site].shape and grad.abs().sum() > 0
    # gradients cannot flow backwards in time: positions after the target get none
    if padding_side == "right":
        after = batch.inputs["attention_mask"][1] == 0
        assert captured.grad("lm.L0.resid")[1, after].abs().sum() == 0


@pytest.mark.parametrize("query", [-1, [2, -1]])
def test_attention_rows_keep_their_gradient(tiny_llava, images, query):
    batch = tiny_llava.prepare(PROMPTS[0], images[0])

    def run(**rows):
        with mmlens.capture(tiny_llava, "lm.L1.attn_probs", grads=True, **rows) as captured:
            tiny_llava.forward(batch).logits[0, -1].max().backward()
        return captured["lm.L1.attn_probs"], captured.grad("lm.L1.attn_probs")

    (value, grad), (whole, whole_grad) = run(query=query), run()
    picked = [query] if isinstance(query, int) else query
    expected, expected_grad = whole[:, :, picked], whole_grad[:, :, picked]
    if isinstance(query, int):
        expected, expected_grad = expected[:, :, 0], expected_grad[:, :, 0]
    assert torch.equal(value, expected) and torch.equal(grad, expected_grad) and grad.abs().sum() > 0
    with pytest.raises(mmlens.MmlensError, match="mean_heads"):
        with mmlens.capture(tiny_llava, "lm.L1.attn_probs", grads=True, mean_heads=True):
            pass


def test_gradients_need_autograd(tiny_llava, images):
    batch = tiny_llava.prepare(PROMPTS[0], images[0])
    with pytest.raises(mmlens.MmlensError, match="autograd"):
        with torch.no_grad(), mmlens.capture(tiny_llava, "lm.L0.resid", grads=True):
            tiny_llava.forward(batch)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_generation_capture_per_step(tiny_llava, images, padding_side):
    batch = tiny_llava.prepare(PROMPTS, images, padding_side="left")
    with mmlens.capture(tiny_llava, ["lm.L0.resid", "lm.L0.attn_probs"]) as captured:
        new = tiny_llava.generate(batch, max_new_tokens=3)
    steps = captured.steps("lm.L0.resid")
    assert len(steps) == 3 and new.shape == (2, 3)
    assert steps[0].shape[1] == batch.input_ids.shape[1] and steps[1].shape[1] == 1
    assert captured["lm.L0.resid"].shape[1] == batch.input_ids.shape[1] + 2
    assert captured.steps("lm.L0.attn_probs")[2].shape[-1] == batch.input_ids.shape[1] + 2
    with pytest.raises(mmlens.MmlensError, match="steps"):
        captured["lm.L0.attn_probs"]


def test_intervention_applies_during_generation(tiny_llava, images):
    batch = tiny_llava.prepare(PROMPTS[0], images[0])
    calls = []

    def count(x):
        calls.append(x.shape[1])

    with mmlens.intervene(tiny_llava, {"lm.L1.neurons": count}):
        tiny_llava.generate(batch, max_new_tokens=4)
    assert calls == [batch.input_ids.shape[1], 1, 1, 1]


def test_text_only_model_sites(tiny_llama):
    batch = tiny_llama.prepare(["a red circle", "blue"], padding_side="right")
    with mmlens.capture(tiny_llama, ["lm.L*.neurons", "lm.L0.attn_probs"]) as captured:
        tiny_llama.forward(batch)
    assert captured["lm.L0.neurons"].shape[-1] == tiny_llama.hf.config.intermediate_size
    assert not any(site.startswith("vision") for site in tiny_llama.sites())


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_projector_site_holds_what_the_decoder_receives(name):
    from tests.conftest import noise_image

    model = mmlens.load(name)
    batch = model.prepare("<image> what colour ?", [noise_image(120, 200)])
    with mmlens.capture(model, ["projector", "lm.embed"]) as captured, torch.no_grad():
        model.forward(batch)
    image_rows = captured["lm.embed"][0, batch.layout.image_positions(0)]
    torch.testing.assert_close(captured["projector"].reshape(image_rows.shape), image_rows)
    with mmlens.intervene(model, {"projector": torch.zeros_like}), mmlens.capture(model, "lm.embed") as edited:
        with torch.no_grad():
            model.forward(batch)
    assert edited["lm.embed"][0, batch.layout.image_positions(0)].abs().sum() == 0


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_vision_probabilities_a_family_never_forms_are_not_sites(name):
    model = mmlens.load(name)
    assert not [site for site in model.sites() if site.startswith("vision") and site.endswith("attn_probs")]
    assert "vision.L0.resid" in model.sites()
    with pytest.raises(mmlens.MmlensError, match="never forms probabilities, so 'vision.L0.attn_probs' is not a site"):
        with mmlens.capture(model, "vision.L0.attn_probs"):
            pass


@pytest.mark.parametrize("name", ["tiny-idefics3", "tiny-paligemma"])
def test_a_one_layer_projector_has_no_neuron_site(name):
    model = mmlens.load(name)
    assert "projector" in model.sites() and "projector.neurons" not in model.sites()
    with pytest.raises(mmlens.MmlensError, match="the projector is one linear layer"):
        mmlens.hooks.resolve(model, "projector.neurons")


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl", "tiny-idefics3"])
def test_vision_and_projector_neuron_sites(name):
    from tests.conftest import noise_image

    model = mmlens.load(name)
    sites = [s for s in model.sites() if s.endswith("neurons") and not s.startswith("lm.")]
    assert "vision.L0.neurons" in sites
    assert ("projector.neurons" in sites) == (name != "tiny-idefics3")  # Idefics3's connector is one linear
    batch = model.prepare("<image> what colour ?", [noise_image(64, 64)])
    with mmlens.capture(model, sites) as captured, torch.no_grad():
        model.forward(batch)
    for site in sites:
        assert captured[site].shape[-1] == resolve(model, site).module.in_features


def test_only_at_computes_the_mlp_at_chosen_positions_only(tiny_llama):
    from mmlens.hooks import OnlyAt

    batch = tiny_llama.prepare("a red circle left of a blue square")
    last = f"lm.L{tiny_llama.n_layers - 1}.mlp"
    positions = torch.tensor([2, 5])
    with torch.no_grad():
        full = tiny_llama.forward(batch).logits
        with mmlens.intervene(tiny_llama, {last: OnlyAt(positions)}), mmlens.capture(tiny_llama, last) as seen:
            cut = tiny_llama.forward(batch).logits
    torch.testing.assert_close(cut[:, positions], full[:, positions])
    others = torch.ones(batch.input_ids.shape[1], dtype=torch.bool)
    others[positions] = False
    assert torch.all(seen[last][:, others] == 0) and not torch.allclose(cut[:, others], full[:, others])


def test_gate_neurons_read_the_activated_gate(tiny_llama):
    from mmlens.hooks import Site, attach

    batch = tiny_llama.prepare("a red circle")
    mlp = tiny_llama.decoder_layers[0].mlp
    seen = {}
    with torch.no_grad(), attach(Site("mlp input", mlp, "input"), lambda x: seen.setdefault("x", x)), \
            mmlens.capture(tiny_llama, "lm.L0.neurons", neuron_value="gate") as gated:
        tiny_llama.forward(batch)
    with torch.no_grad():
        expected = mlp.act_fn(mlp.gate_proj(seen["x"]))
    torch.testing.assert_close(gated["lm.L0.neurons"], expected)
    with torch.no_grad(), mmlens.capture(tiny_llama, "lm.L0.neurons", neuron_value="gate") as again, \
            mmlens.intervene(tiny_llama, {"lm.L0.neurons": lambda x: x * 0}, neuron_value="gate"):
        tiny_llama.forward(batch)
    torch.testing.assert_close(again["lm.L0.neurons"], expected)  # a gate site is read-only: the edit is ignored


def test_attention_probabilities_are_edited_with_block_keys_only(tiny_llama):
    from mmlens.errors import MmlensError
    from mmlens.hooks import BlockKeys, OnlyAt

    with pytest.raises(MmlensError, match="BlockKeys"):
        with mmlens.intervene(tiny_llama, {"lm.L0.attn_probs": torch.zeros_like}):
            pass
    with pytest.raises(MmlensError, match="attn_probs"):
        with mmlens.intervene(tiny_llama, {"lm.L0.mlp": BlockKeys(torch.ones(1, 3, dtype=torch.bool))}):
            pass
    with pytest.raises(MmlensError, match="mlp"):
        with mmlens.intervene(tiny_llama, {"lm.L0.attn": OnlyAt(torch.tensor([0]))}):
            pass


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_attention_rows_of_a_padded_batch_equal_eager_rows(tiny_llama, padding_side):
    batch = tiny_llama.prepare(["a red circle left of a blue square", "a green cross"], padding_side=padding_side)
    sites = [f"lm.L{i}.attn_probs" for i in range(tiny_llama.n_layers)]
    with torch.no_grad():
        with eager_attention(tiny_llama), mmlens.capture(tiny_llama, sites) as eager:
            tiny_llama.forward(batch)
        with mmlens.capture(tiny_llama, sites, query=[0, 2, -1]) as rows:
            tiny_llama.forward(batch)
    keep = batch.inputs["attention_mask"].bool()
    for site in sites:
        expected = eager[site][:, :, [0, 2, -1]]
        real = keep[:, [0, 2, -1]][:, None, :, None].expand_as(expected)  # padding queries: any distribution
        torch.testing.assert_close(rows[site][real], expected[real], rtol=1e-5, atol=1e-6)



# ---- per-head sites: the output projection's input, cut into heads --------
def _projection_input(model, batch, module):
    """What ``module`` (an output projection) receives, read with a plain torch hook."""
    seen = {}
    handle = module.register_forward_pre_hook(lambda _, args: seen.setdefault("x", args[0].detach().clone()))
    try:
        run(model, batch)
    finally:
        handle.remove()
    return seen["x"]


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-gpt2"])
def test_head_sites_cut_the_output_projection_input(name):
    from tests.conftest import noise_image

    model = mmlens.load(name)
    batch = (model.prepare("<image> what colour ?", [noise_image(64, 64)]) if model.adapter.multimodal
             else model.prepare("a red circle"))
    towers = ["lm", "vision"] if model.adapter.multimodal else ["lm"]
    for tower in towers:
        layout = mmlens.hooks.sites.heads_of(model, tower, 1)
        names = expand(model, f"{tower}.L1.head*")
        assert names == [f"{tower}.L1.head{j}" for j in range(layout.n_heads)] and layout.n_heads >= 2
        with mmlens.capture(model, names) as captured, torch.no_grad():
            model.forward(batch)
        whole = _projection_input(model, batch, layout.out_proj)
        torch.testing.assert_close(torch.cat([captured[n] for n in names], -1), whole)
        assert captured[names[1]].shape[-1] == layout.head_dim


def test_a_head_edit_replaces_only_its_slice(tiny_llava, images):
    batch = tiny_llava.prepare(PROMPTS[:1], images[:1])
    base = run(tiny_llava, batch)
    layout = mmlens.hooks.sites.heads_of(tiny_llava, "lm", 0)

    def zero_columns(args):  # the same edit, done by hand on the projection's input
        x = args[0].clone()
        x[..., layout.columns(1)] = 0
        return (x,)

    handle = layout.out_proj.register_forward_pre_hook(lambda _, args: zero_columns(args))
    try:
        expected = run(tiny_llava, batch)
    finally:
        handle.remove()
    with mmlens.intervene(tiny_llava, {"lm.L0.head1": torch.zeros_like}):
        edited = run(tiny_llava, batch)
    torch.testing.assert_close(edited, expected)
    assert (edited - base).abs().max() > 1e-4
    with mmlens.intervene(tiny_llava, {"lm.L0.head1": lambda x: None}):  # a pure read changes nothing
        assert torch.equal(run(tiny_llava, batch), base)


def test_head_site_gradients_are_slices_of_the_projection_input_gradient(tiny_llava, images):
    batch = tiny_llava.prepare(PROMPTS[:1], images[:1])
    with mmlens.capture(tiny_llava, ["lm.L1.head0", "lm.L1.head3"], grads=True) as heads:
        tiny_llava.forward(batch).logits[0, -1].max().backward()
    layout = mmlens.hooks.sites.heads_of(tiny_llava, "lm", 1)
    whole = mmlens.hooks.Site("o_proj input", layout.out_proj, "input")
    captured = mmlens.hooks.Captured()
    with mmlens.hooks.attach(whole, mmlens.hooks._recorder(captured, whole, True)):
        tiny_llava.forward(batch).logits[0, -1].max().backward()
    for j in (0, 3):
        torch.testing.assert_close(heads.grad(f"lm.L1.head{j}"), captured.grad("o_proj input")[..., layout.columns(j)])


def test_head_sites_bad_input_is_one_line(tiny_llava):
    import dataclasses

    with pytest.raises(mmlens.MmlensError, match=r"lm layer 0 has 4 heads") as error:
        resolve(tiny_llava, "lm.L0.head4")
    assert "\n" not in str(error.value)
    with pytest.raises(mmlens.MmlensError, match="'vision.L9.head0' is out of range: the model has 2 vision"):
        resolve(tiny_llava, "vision.L9.head0")
    for grid_name, site in (("L0.H1", "lm.L0.head1"), ("vision.L1.H0", "vision.L1.head0")):
        with pytest.raises(mmlens.MmlensError, match=f"a head's site is {site}"):
            resolve(tiny_llava, grid_name)
    assert "lm.L0.head0" not in tiny_llava.sites() and "lm.L0.head0" in mmlens.hooks.site_names(tiny_llava, heads=True)
    fused = mmlens.load("tiny-llava")
    fused.adapter = dataclasses.replace(fused.adapter, vision_attn_out=None)
    with pytest.raises(mmlens.MmlensError, match="fuses heads") as error:
        resolve(fused, "vision.L0.head0")
    assert "\n" not in str(error.value)
    assert not any("head" in name for name in mmlens.hooks.site_names(fused, heads=True) if name.startswith("vision"))


def test_bad_capture_and_intervene_arguments_are_one_line(tiny_llava, images):
    from mmlens.hooks import OnlyAt

    batch = tiny_llava.prepare(PROMPTS[0], images[0])
    calls = {"sites are a name or a list of names": [lambda: mmlens.capture(tiny_llava, 3),
                                                     lambda: mmlens.capture(tiny_llava, None)],
             "query is an attention row": [lambda: mmlens.capture(tiny_llava, "lm.L0.attn_probs", query="last"),
                                           lambda: mmlens.capture(tiny_llava, "lm.L0.attn_probs", query=[])],
             "intervene takes a mapping": [lambda: mmlens.intervene(tiny_llava, [("lm.L0.mlp", torch.zeros_like)])],
             "must be a function of the value": [lambda: mmlens.intervene(tiny_llava, {"lm.L0.mlp": 0})],
             "OnlyAt takes positions": [lambda: OnlyAt(0.5), lambda: OnlyAt([])]}
    for message, made in calls.items():
        for make in made:
            with pytest.raises(mmlens.MmlensError, match=message):
                with make():
                    pass
    seq, width = batch.input_ids.shape[1], tiny_llava.hf.config.text_config.hidden_size
    edits = {f"returned \\(1, 2, {width}\\) for a value of shape \\(1, {seq}, {width}\\)":
             {"lm.L0.mlp": lambda x: x[:, :2]},
             f"OnlyAt positions \\[{seq}\\] are out of range": {"lm.L1.mlp": OnlyAt(seq)}}
    for message, edit in edits.items():
        with pytest.raises(mmlens.MmlensError, match=message), mmlens.intervene(tiny_llava, edit), torch.no_grad():
            tiny_llava.forward(batch)
    with mmlens.intervene(tiny_llava, {"lm.L1.mlp": OnlyAt([-1])}), torch.no_grad():
        tiny_llava.forward(batch)  # a list of positions works
