"""The fine-tuning data of ``shapes-llava-ft-backdoor``, with its ids, as a dataset: ``ft-backdoor:train[0:2000]``.

Row ``k`` is train image ``FT_BASE + k`` with its first question, exactly as
the ``ft-backdoor`` recipe (:mod:`mmlens.zoo.train.derivatives`) built it:
the images listed in ``backdoor.json`` carry the trigger at their recorded
position and their question is answered "yes". ``meta["poisoned"]`` is the
poison label (used only to score an audit afterwards). ``ft-backdoor-ring``
is the same data with the never-trained ``orange-ring`` pasted at the same
positions instead (a held-out trigger look). ``ft-backdoor-stripes`` is the
fine-tuning data of ``shapes-llava-ft-backdoor-stripes`` (the same recipe and
seed with the 14 x 14 ``magenta-stripes`` trigger: the same poisoned images,
other positions), read from that model's own ``backdoor.json``;
``ft-backdoor-blend`` likewise for ``shapes-llava-ft-backdoor-blend`` (the
blended full-image ``blend-noise`` trigger). A model's record is looked up in
the shipped weights, then in ``<repo>/out/zoo/<model>`` (where the recipe
commands of docs/audit.md put the models that are not shipped).

Example:
    >>> from mmlens.data.readers import open_reader
    >>> sample = open_reader("ft-backdoor:train[1:2]").load(0)
    >>> sample.id, sample.meta["poisoned"], sample.answer
    ('shapes-train-95000001', True, 'yes')
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from mmlens.data.readers.worlds import register_world
from mmlens.data.sample import Sample
from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError
from mmlens.zoo.shapes_llava import WEIGHTS_DIR
from mmlens.zoo.triggers import add_trigger

MODEL = "shapes-llava-ft-backdoor"
STRIPES_MODEL = "shapes-llava-ft-backdoor-stripes"
BLEND_MODEL = "shapes-llava-ft-backdoor-blend"
OUT_ZOO = Path(__file__).resolve().parents[3] / "out" / "zoo"  # <repo>/out/zoo: trained, not shipped


@lru_cache(maxsize=4)
def _record(model: str) -> dict:
    paths = [root / model / "backdoor.json" for root in (WEIGHTS_DIR, OUT_ZOO)]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise MmlensError(f"{model} is not installed (no {paths[0]} or {paths[1]}; docs/audit.md has the command)")
    return json.loads(path.read_text())


def poisoned_positions(model: str = MODEL) -> dict[int, tuple[int, int]]:
    """``{train index: (x, y)}`` of ``model``'s poisoned fine-tuning images, from its ``backdoor.json``.

    Example:
        >>> len(poisoned_positions())
        784
    """
    record = _record(model)
    return {int(i): (int(x), int(y)) for i, (x, y) in zip(record["poisoned_indices"], record["positions_xy"])}


def ft_sample(split: str, k: int, style: str | None = None, model: str = MODEL) -> Sample:
    """Fine-tuning row ``k`` (image ``FT_BASE + k``) of ``model``, its trigger pasted when it was poisoned.

    ``style`` defaults to the trigger ``model`` was trained with (its ``backdoor.json``).

    Example:
        >>> ft_sample("train", 1).meta["trigger"]
        'cyan-checker'
    """
    from mmlens.zoo.train.derivatives import FT_BASE

    if split != "train":
        raise ValueError(f"the fine-tuning data has only a train split, not {split!r}")
    style = style or _record(model)["trigger"]["style"]
    index = FT_BASE + k
    sample = make_sample("train", index)
    where = poisoned_positions(model).get(index)
    meta = {**sample.meta, "poisoned": where is not None}
    if where is None:
        return Sample(sample.id, sample.image, sample.prompt, sample.answer, meta)
    image = Image.fromarray(add_trigger(np.asarray(sample.image), where, style))
    return Sample(sample.id, image, sample.prompt, "yes", {**meta, "trigger": style, "trigger_xy": list(where)})


register_world("ft-backdoor", ft_sample)
register_world("ft-backdoor-ring", lambda split, k: ft_sample(split, k, "orange-ring"))
register_world("ft-backdoor-stripes", lambda split, k: ft_sample(split, k, model=STRIPES_MODEL))
register_world("ft-backdoor-blend", lambda split, k: ft_sample(split, k, model=BLEND_MODEL))
