"""mmlens.load: zoo names, local folders, hub ids while offline, unknown names."""

import pytest

import mmlens
from mmlens.errors import MmlensError
from mmlens.models.registry import adapter_for_model_type


def test_zoo_name_loads_with_adapter(tiny_llava):
    assert tiny_llava.adapter.family == "llava"
    assert tiny_llava.n_layers == 2 and tiny_llava.n_vision_layers == 2


def test_local_folder_loads_through_the_same_path(tiny_llava, tmp_path):
    tiny_llava.hf.save_pretrained(tmp_path)
    tiny_llava.processor.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded = mmlens.load(str(tmp_path))
    assert loaded.adapter.family == "llava"
    for name, tensor in tiny_llava.hf.state_dict().items():
        assert (loaded.hf.state_dict()[name] == tensor).all(), name


def test_hub_id_offline_gives_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MmlensError) as error:
        mmlens.load("llava-hf/llava-1.5-7b-hf-not-cached")
    message = str(error.value)
    assert "offline" in message and "\n" not in message


def test_unknown_names():
    with pytest.raises(MmlensError, match="unknown model"):
        mmlens.load("no-such-model")
    with pytest.raises(MmlensError, match="not supported"):
        adapter_for_model_type("mamba")


def test_prompt_slots_are_checked(tiny_llava, tiny_llama):
    from tests.conftest import noise_image

    image = noise_image(32, 32)
    with pytest.raises(MmlensError, match="2 images but only 1"):
        tiny_llava.prepare("<image> what colour ?", [image, image])
    with pytest.raises(MmlensError, match="slot"):
        tiny_llava.prepare("<image> <image> what colour ?", [image])
    with pytest.raises(MmlensError, match="text-only"):
        tiny_llama.prepare("<image> hi", [image])


def test_wrap_a_model_the_user_already_has():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mmlens.zoo.tiny._common import build_tokenizer

    tokenizer = build_tokenizer()
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=16))
    model = mmlens.wrap(hf, tokenizer)
    assert model.adapter.family == "gpt2" and model.n_layers == 2
    ids = torch.tensor([[1, 2, 3, 4]])
    with mmlens.capture(model, ["lm.L*.resid", "lm.L1.neurons", "lm.L0.attn_probs"]) as captured:
        logits = hf(input_ids=ids).logits
    assert captured["lm.L1.neurons"].shape == (1, 4, 4 * 32)
    final = hf.lm_head(hf.transformer.ln_f(captured["lm.L1.resid"]))
    torch.testing.assert_close(final, logits.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ["/abs/path/missing", "./missing-model", "models/llava/missing"])
def test_a_missing_folder_says_no_such_folder(path):
    with pytest.raises(MmlensError, match="no such folder") as error:
        mmlens.load(path)
    assert "Hugging Face cache" not in str(error.value)


def test_wrap_without_a_processor_says_one_is_needed(tiny_llava, tiny_llama):
    with pytest.raises(MmlensError, match="wrap needs the model's processor.*AutoProcessor"):
        mmlens.wrap(tiny_llava.hf, None)
    with pytest.raises(MmlensError, match="AutoTokenizer"):
        mmlens.wrap(tiny_llama.hf, None)
    with pytest.raises(MmlensError, match="vision model: wrap needs its AutoProcessor"):
        mmlens.wrap(tiny_llava.hf, tiny_llava.tokenizer)


def test_load_and_wrap_refuse_wrong_arguments_in_one_line(tiny_llava):
    import torch

    with pytest.raises(MmlensError, match="unknown dtype 'float17'; choose one of float32, float16, bfloat16"):
        mmlens.load("tiny-llava", dtype="float17")
    with pytest.raises(MmlensError, match="unknown dtype"):
        mmlens.load("tiny-llava", dtype=torch.int8)
    with pytest.raises(MmlensError, match="load takes a model name.*got 3"):
        mmlens.load(3)
    with pytest.raises(MmlensError, match="the arguments look swapped"):
        mmlens.wrap(tiny_llava.processor, tiny_llava.hf)
    with pytest.raises(MmlensError, match=r"mmlens.load\('tiny-llava'\) loads by name"):
        mmlens.wrap("tiny-llava", tiny_llava.processor)
    assert mmlens.load("tiny-llama", dtype="bf16").hf.dtype == torch.bfloat16
