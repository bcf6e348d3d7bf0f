"""Grad-ECLIP maps of every tower layer and the MMEL map on a few held-out shapes samples, as one figure.

    python benchmarks/grad_eclip_figure.py [--model shapes-llava] [--samples 3] [--out docs/figures/grad_eclip_layers.png]

Rows are test samples (colour and shape questions, the answer teacher-forced);
columns the image with the asked object's box, Grad-ECLIP at each tower layer
(ReLU-loosened, all queries), Grad-ECLIP with the model's own softmax at the
last layer, and MMEL with the shipped weights. Each map is painted at tower
patch resolution (:func:`mmlens.attribution.grad_eclip.patch_heatmaps`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import mmlens  # noqa: E402
from mmlens.attribution.grad_eclip import patch_heatmaps, tower_maps  # noqa: E402
from mmlens.attribution.mmel import mmel  # noqa: E402
from mmlens.data.shapes import make_sample  # noqa: E402
from mmlens.readout import build_targets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--out", default="docs/figures/grad_eclip_layers.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = mmlens.load(args.model)
    samples = [make_sample("test", i, ("colour", "shape")[i % 2]) for i in range(args.samples)]
    batch = model.prepare([s.prompt for s in samples], [[s.image] for s in samples])
    targets = build_targets(model, batch, answer=[s.answer for s in samples])
    layers = list(range(model.n_vision_layers))
    loose = tower_maps(model, targets, layers)
    own = tower_maps(model, targets, [layers[-1]], spatial="softmax")
    combined = mmel(model, targets)
    merge = loose.views[0].merge
    columns = [("image", None)] + [(f"layer {i} (ReLU)", loose.grids[i]) for i in layers] + [
        (f"layer {layers[-1]} (softmax)", own.grids[layers[-1]]),
        ("MMEL " + "/".join(f"{w:.2f}" for w in combined.extras["weights"]), combined.extras["patch_grids"])]
    figure, axes = plt.subplots(len(samples), len(columns), figsize=(2.1 * len(columns), 2.3 * len(samples)),
                                squeeze=False)
    for row, sample in enumerate(samples):
        box = sample.objects[sample.target_objects[0]].box if sample.target_objects else None
        for col, (title, grids) in enumerate(columns):
            axis = axes[row][col]
            axis.imshow(sample.image)
            if grids is not None:
                heat = patch_heatmaps(batch.layout, grids[row, 0], merge, row)[0]
                axis.imshow(heat, cmap="inferno", alpha=0.65)
            if box is not None:
                x0, y0, x1, y1 = box
                axis.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="cyan", lw=1))
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=8)
            if col == 0:
                axis.set_ylabel(f"{sample.prompt.replace('<image> ', '')}\n-> {sample.answer}", fontsize=7)
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
