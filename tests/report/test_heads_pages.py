"""The heads page: one heatmap per grid, grey cells where nothing was computed, the weak-corruption title."""

import torch

from mmlens.causal.head_grid import HeadGrid
from mmlens.report.heads_pages import describe, head_figure, write_heads_page


def _grid(kind="patching", corrupt=0.2):
    edited = torch.rand(2, 3, 4)
    edited[:, 0, 0] = float("nan")  # a cell not computed
    settings = {"ablation": "zero"} if kind == "knockout" else {"direction": "clean->corrupt",
                                                                  "corruption": {"kind": "noise", "noise": 3.0}}
    return HeadGrid("m", ["<image> what colour ?"] * 2, ["red"] * 2, torch.tensor([3, 3]), kind, settings,
                    "probability", torch.tensor([0.9, 0.8]), None if kind == "knockout" else torch.full((2,), corrupt),
                    edited, group=[(1, 2)], group_edited=torch.tensor([0.5, 0.4]))


def test_the_figure_is_layers_by_heads_with_missing_cells_masked():
    image = head_figure(_grid()).axes[0].images[0].get_array()
    assert image.shape == (3, 4) and bool(image.mask[0, 0]) and not image.mask[1, 1]


def test_a_weak_corruption_says_so_in_the_title_and_masks_every_cell():
    weak = _grid(corrupt=0.88)  # gap 0.03, under 0.05
    axes = head_figure(weak).axes[0]
    assert "barely moves the answer" in axes.get_title().replace("\n", " ") and axes.images[0].get_array().mask.all()


def test_page_holds_every_grid_and_the_group(tmp_path):
    grids = {"knockout": _grid("knockout"), "patching": _grid()}
    page = write_heads_page(grids, tmp_path).read_text()
    assert page.count("data:image/png;base64") == 2 and "L1.H2" in page
    assert (tmp_path / "heads_knockout.png").is_file() and (tmp_path / "heads.json").is_file()
    assert describe(grids["knockout"]).endswith("(zero)") and "clean->corrupt" in describe(grids["patching"])
