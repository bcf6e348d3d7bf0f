"""Does a vision tower give the colour and the shape of shapes-world objects? A linear probe per object patch.

    python benchmarks/tower_probe.py --model domains-llava [--tower CACHED.safetensors] [--json]

Features: the patch tokens of the layer the projector reads (CLS dropped) of
``--train`` shapes-world train images (indices from 7,000,000, which no recipe
trains on) and the first ``--val`` validation images. Labels:
:func:`mmlens.data.shapes.patch_labels` (an object covering at least a
quarter of the patch). A logistic regression per label is fit on the train
images' object patches and scored on the validation images' object patches.
``--tower`` loads a stage-1 tower cached by a training run into the model first.

With ``--json`` the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from mmlens.data.shapes import make_sample, patch_labels  # noqa: E402
from mmlens.zoo import build  # noqa: E402
from mmlens.zoo.evaluate import encode  # noqa: E402
from mmlens.zoo.shapes_llava import GRID, load_from  # noqa: E402

TRAIN_OFFSET = 7_000_000


def patch_features(model, processor, split: str, offset: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch tokens ``(n * 64, width)`` and per-patch colour and shape labels (-1: background)."""
    samples = [make_sample(split, offset + i) for i in range(n)]
    feats = []
    with torch.no_grad():
        for c in range(0, n, 100):
            part = samples[c:c + 100]
            pixels = encode(processor, [np.asarray(s.image) for s in part], [""] * len(part))["pixel_values"]
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
            tokens = hidden[model.config.vision_feature_layer][:, 1:]
            feats.append(tokens.reshape(-1, tokens.shape[-1]).numpy())
    colours, shapes = zip(*(patch_labels(s.objects, GRID) for s in samples))
    return np.concatenate(feats), np.concatenate([c.ravel() for c in colours]), np.concatenate([s.ravel() for s in shapes])


def probe(model, processor, n_train: int = 600, n_val: int = 200) -> dict[str, float]:
    """Validation accuracy of a linear probe for the colour and the shape of object patches.

    Example:
        >>> probe(*build("shapes-llava"), n_train=50, n_val=20)["shape"] > 0.5  # doctest: +SKIP
        True
    """
    x_tr, c_tr, s_tr = patch_features(model, processor, "train", TRAIN_OFFSET, n_train)
    x_va, c_va, s_va = patch_features(model, processor, "val", 0, n_val)
    on_tr, on_va = c_tr >= 0, c_va >= 0
    out = {"object_patches_val": int(on_va.sum())}
    for name, y_tr, y_va in (("colour", c_tr, c_va), ("shape", s_tr, s_va)):
        clf = LogisticRegression(max_iter=2000).fit(x_tr[on_tr], y_tr[on_tr])
        out[name] = round(float(clf.score(x_va[on_va], y_va[on_va])), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="domains-llava", help="zoo name or saved folder")
    parser.add_argument("--tower", type=Path, default=None, help="a cached stage-1 tower (safetensors) to load")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, processor = load_from(args.model) if Path(args.model).is_dir() else build(args.model)
    if args.tower is not None:
        model.model.vision_tower.load_state_dict(load_file(args.tower))
    figures = {"model": args.model, "tower": str(args.tower) if args.tower else None,
               **probe(model, processor, args.train, args.val)}
    print(f"{args.model}{' + ' + str(args.tower) if args.tower else ''}: linear probe on "
          f"{figures['object_patches_val']} object patches: colour {figures['colour']:.2%}, shape {figures['shape']:.2%}")
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
