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
    with pytest.raises(MmlensError, match="no image slot"):
        tiny_llava.prepare("what colour ?", [image])
    with pytest.raises(MmlensError, match="2 images but only 1"):
        tiny_llava.prepare("<image> what colour ?", [image, image])
    with pytest.raises(MmlensError, match="slot"):
        tiny_llava.prepare("<image> <image> what colour ?", [image])
    with pytest.raises(MmlensError, match="text-only"):
        tiny_llama.prepare("<image> hi", [image])
