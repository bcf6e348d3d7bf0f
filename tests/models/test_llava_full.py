"""LLaVA with vision_feature_select_strategy="full": the CLS token leads each image's run, laid out as special."""

import pytest

import mmlens
from mmlens.layout import Modality
from mmlens.models import llava as llava_adapter
from mmlens.models.verify import verify_layout
from mmlens.zoo.tiny import llava
from tests.conftest import noise_image


@pytest.fixture(scope="module")
def full_llava() -> mmlens.Model:
    hf, processor = llava.build()
    processor.vision_feature_select_strategy = "full"
    hf.config.vision_feature_select_strategy = "full"
    return mmlens.wrap(hf, processor, name="tiny-llava-full")


def test_full_strategy_adds_one_cls_token_per_image(full_llava):
    images = [noise_image(64, 64, 1), noise_image(40, 80, 2)]
    batch = full_llava.prepare("<image> and <image> same ?", images)
    image_id = full_llava.processor.tokenizer.convert_tokens_to_ids("<image>")
    runs = (batch.input_ids[0] == image_id).nonzero().flatten().tolist()
    assert len(runs) == 2 * (16 + 1)
    layout = batch.layout
    for start in (runs[0], runs[17]):  # each run starts with its CLS token: no patch, so special
        assert layout.modality[0, start] == int(Modality.SPECIAL) and layout.image[0, start] == -1
    assert layout.image_positions(0, 0).numel() == layout.image_positions(0, 1).numel() == 16
    full_llava.forward(batch)  # the model agrees on the token count


@pytest.mark.parametrize("size", [(64, 64), (120, 200)])
def test_full_strategy_layout_is_proved_by_perturbation(full_llava, size):
    report = verify_layout(full_llava, noise_image(*size))
    assert report.ok, report.failures()


def test_unknown_strategy_is_refused_plainly():
    class Processor:
        vision_feature_select_strategy = "cls_patch"
        num_additional_image_tokens = 1

    with pytest.raises(mmlens.MmlensError, match="not supported"):
        llava_adapter.leading_tokens(Processor())


def test_verify_layout_takes_a_path(tiny_llava, tmp_path):
    path = tmp_path / "photo.png"
    noise_image(64, 64).save(path)
    assert verify_layout(tiny_llava, path, regions=2).ok
    assert verify_layout(tiny_llava, str(path), regions=2).ok
