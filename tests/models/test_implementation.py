"""The attention implementation switch: it switches every sub-model, puts back each one's own choice, and
refuses a module that cannot switch. (The contract test in ``test_runtime.py`` checks it on a GPU too.)"""

import pytest
import torch
from transformers import LlamaConfig

import mmlens
from mmlens.errors import MmlensError
from mmlens.models.runtime.implementation import (
    _all_equal,
    _implementations,
    attention_implementation,
    config_attention,
    current_attention,
)


def test_a_config_that_names_no_implementation_runs_eager():
    assert config_attention(LlamaConfig()) == "eager"


def test_sub_models_with_different_implementations_each_get_their_own_back():
    model = mmlens.load("tiny-llava")
    model.hf.set_attn_implementation({"": "sdpa", "vision_config": "eager", "text_config": "sdpa"})
    before = _implementations(model.hf.config)
    assert not _all_equal(before, "sdpa")  # a mixed tree, so the restore must name each sub-model
    with attention_implementation(model.hf, "eager"):
        assert _all_equal(_implementations(model.hf.config), "eager")
        assert current_attention(model.hf) == "eager"
    assert _implementations(model.hf.config) == before


def test_asking_for_the_implementation_already_running_changes_nothing():
    model = mmlens.load("tiny-llama")
    before = _implementations(model.hf.config)
    with attention_implementation(model.hf, current_attention(model.hf)):
        assert _implementations(model.hf.config) == before
    assert _implementations(model.hf.config) == before


def test_a_module_that_cannot_switch_is_refused_in_one_line():
    with pytest.raises(MmlensError, match="cannot switch its attention implementation"):
        with attention_implementation(torch.nn.Linear(2, 2), "eager"):
            pass
