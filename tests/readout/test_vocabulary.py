"""Answers and foils outside the vocabulary are refused, naming the word, never explained as <unk>."""

import pytest

from mmlens.errors import MmlensError
from mmlens.readout import answer_token_ids, build_targets
from mmlens.readout.vocabulary import token_ids


def test_known_words_pass(tiny_llama):
    assert token_ids(tiny_llama, "red", "answer") == tiny_llama.tokenizer("red", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("answer, foil, words", [
    ("quokka", None, "'quokka' becomes <unk>"),
    ("red", "quokka", "the foil 'quokka'"),
    ("red kiwi quokka", None, "'kiwi', 'quokka' become <unk>"),
])
def test_targets_refuse_unknown_words(tiny_llama, answer, foil, words):
    batch = tiny_llama.prepare("a red circle")
    with pytest.raises(MmlensError, match="not in tiny-llama's vocabulary") as error:
        build_targets(tiny_llama, batch, answer=answer, foil=foil)
    assert words in str(error.value)


def test_answer_token_ids_refuse_unknown_words(tiny_llama):
    with pytest.raises(MmlensError, match="the answer 'quokka' is not in tiny-llama's vocabulary"):
        answer_token_ids(tiny_llama, ["red", "quokka"], None, rows=2)
