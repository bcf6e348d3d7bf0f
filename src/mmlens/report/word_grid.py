"""The logit-lens word grid: one panel per layer, the image under its patch grid, each cell with its top-1 word.

The grid is drawn over the view that covers the whole image (the global view
of a tiled image, the only view of a plain one); a tiled image without one gets
every tile at its own box. Panels are laid out in balanced rows, the font is
sized so that words fit their cells (longer words are abbreviated and spelled
out under the panels), and a colour bar explains the grey shading.

Example:
    >>> figure = lens_word_grid_figure(lens, image, layers=[0, -1])  # doctest: +SKIP
    >>> [axes.get_title() for axes in figure.axes[:2]]  # doctest: +SKIP
    ['embed', 'L3']
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from mmlens.report.figures import display_token

if TYPE_CHECKING:
    from mmlens.layout import ImageInfo
    from mmlens.lens.logit_lens import LogitLens

SHADE_LOW, SHADE_HIGH = 0.15, 0.75  # the part of "Greys" the cells use: light = unsure, dark = sure
CHAR_EM = 0.62  # DejaVu Sans lower-case advance per point of font size, rounded up so words fit
MIN_FONT, MAX_FONT = 5.0, 8.0
TITLE_IN, GAP_IN, SUPTITLE_IN, BAR_IN = 0.25, 0.15, 0.4, 1.0  # fixed margins (inches) so cell sizes are known


def covering_views(info: "ImageInfo") -> list[int]:
    """The views to draw a whole image with: the one whose box covers the image if any, else all of them.

    Example:
        >>> from mmlens.layout import ImageInfo, View
        >>> tiles = [View(2, 2, (0, 0, 40, 40), "tile"), View(2, 2, (40, 0, 80, 40), "tile")]
        >>> covering_views(ImageInfo((40, 80), tiles + [View(2, 4, (0, 0, 80, 40), "global")]))
        [2]
        >>> covering_views(ImageInfo((40, 80), tiles))
        [0, 1]
    """
    height, width = info.size
    for index, view in enumerate(info.views):
        x0, y0, x1, y1 = view.box
        if x0 <= 0 and y0 <= 0 and x1 >= width and y1 >= height:
            return [index]
    return list(range(len(info.views)))


def abbreviate(words: Sequence[str], limit: int) -> dict[str, str]:
    """Short forms (at most ``limit`` characters, ending in ``.``) of the words longer than ``limit``, all distinct.

    Example:
        >>> abbreviate(["triangle", "top", "triangles"], 4)
        {'triangle': 'tri.', 'triangles': 'tr1.'}
    """
    limit = max(limit, 2)
    short: dict[str, str] = {}
    taken = {word for word in words if len(word) <= limit}
    for word in sorted({word for word in words if len(word) > limit}):
        candidate = word[: limit - 1] + "."
        n = 1
        while candidate in taken:  # two words with one prefix: number the later one
            stem = word[: max(1, limit - 1 - len(str(n)))]
            candidate, n = f"{stem}{n}.", n + 1
        short[word] = candidate
        taken.add(candidate)
    return short


def lens_word_grid_figure(
    lens: "LogitLens",
    image: Image.Image,
    row: int = 0,
    image_index: int = 0,
    view: int | None = None,
    layers: Sequence[int] | None = None,
    columns: int = 4,
    dpi: int = 100,
) -> Figure:
    """One panel per layer: the image under its patch grid, each cell labelled with its top-1 word.

    ``view`` picks one view; by default the view covering the whole image, or
    every view at its box (see :func:`covering_views`). Cells are shaded by
    the word's probability (darker = surer; the colour bar on the right).

    Example:
        >>> figure = lens_word_grid_figure(lens, image, layers=[0, -1])  # doctest: +SKIP
        >>> figure.axes[-1].get_ylabel()  # doctest: +SKIP
        'probability of the top-1 word'
    """
    chosen = list(range(len(lens.layer_names))) if layers is None else [i % len(lens.layer_names) for i in layers]
    info = lens.layout.images[row][image_index]
    views = covering_views(info) if view is None else [view]
    height_px, width_px = info.size
    grids = {(layer, v): _cleaned(lens, layer, row, image_index, v) for layer in chosen for v in views}
    panel_rows = math.ceil(len(chosen) / max(1, columns))
    panel_cols = math.ceil(len(chosen) / panel_rows)  # 5 panels: 3 + 2, not 4 + 1
    # About half an inch per cell across, so short words stay legible; a panel is 3.2 to 5 inches wide.
    cells_across = max(info.views[v].cols * width_px / max(info.views[v].box[2] - info.views[v].box[0], 1e-6)
                       for v in views)
    panel_w = float(np.clip(0.5 * cells_across, 3.2, 5.0))
    scale = panel_w / width_px if height_px / width_px <= 1.5 else 1.5 * panel_w / height_px  # inches per pixel
    image_w, image_h = width_px * scale, height_px * scale
    cell_pt = 72 * scale * min((info.views[v].box[2] - info.views[v].box[0]) / info.views[v].cols for v in views)
    words = sorted({word for (_, v), (grid, _) in grids.items() for word in grid.flat if word})
    longest = max((len(word) for word in words), default=1)
    font = float(np.clip(0.9 * cell_pt / (CHAR_EM * longest), MIN_FONT, MAX_FONT))
    short = abbreviate(words, int(0.9 * cell_pt / (CHAR_EM * font)))
    legend = "abbreviations: " + " · ".join(f"{s} = {w}" for w, s in short.items()) if short else ""
    figure_w = panel_cols * (image_w + GAP_IN) + GAP_IN + BAR_IN
    legend_lines = textwrap.wrap(legend, width=max(40, int(figure_w * 72 / (0.55 * 8)))) if legend else []
    legend_in = 0.18 * len(legend_lines) + (0.1 if legend_lines else 0.0)
    figure_h = SUPTITLE_IN + panel_rows * (image_h + TITLE_IN) + (panel_rows - 1) * GAP_IN + legend_in + 0.1
    figure = Figure(figsize=(figure_w, figure_h), dpi=dpi)
    FigureCanvasAgg(figure)
    shade = LinearSegmentedColormap.from_list(
        "lens_shade", matplotlib.colormaps["Greys"](np.linspace(SHADE_LOW, SHADE_HIGH, 64)))
    pixels = np.asarray(image.convert("RGB"))
    for k, layer in enumerate(chosen):
        r, c = divmod(k, panel_cols)
        left = GAP_IN + c * (image_w + GAP_IN)
        top = SUPTITLE_IN + r * (image_h + TITLE_IN + GAP_IN) + TITLE_IN
        box = (left / figure_w, 1 - (top + image_h) / figure_h, image_w / figure_w, image_h / figure_h)
        axes = figure.add_axes(box)
        axes.imshow(pixels, extent=(0, width_px, height_px, 0))
        for v in views:
            _draw_view(axes, info.views[v], *grids[(layer, v)], shade, short, font)
        axes.set_xlim(0, width_px)
        axes.set_ylim(height_px, 0)
        axes.set_axis_off()
        axes.set_title(lens.layer_names[layer], fontsize=9)
    top = SUPTITLE_IN + TITLE_IN
    bar_h = min(image_h, 3.0)
    bar_axes = figure.add_axes(((figure_w - BAR_IN + 0.05) / figure_w, 1 - (top + bar_h) / figure_h,
                                0.15 / figure_w, bar_h / figure_h))
    bar = figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), shade), cax=bar_axes)
    bar.set_label("probability of the top-1 word", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if legend_lines:
        figure.text(GAP_IN / figure_w, 0.08 / figure_h, "\n".join(legend_lines), fontsize=8, va="bottom", ha="left")
    figure.suptitle(f"logit lens: top-1 word per image patch{_which(info, views)}", fontsize=10,
                    y=1 - 0.1 / figure_h, va="top")
    return figure


def _which(info: "ImageInfo", views: list[int]) -> str:
    """Title suffix naming the drawn views (nothing for the only view of a plain image)."""
    if len(views) > 1:
        return " (every tile)"
    kind = info.views[views[0]].kind
    return "" if kind == "image" else " (global view)" if kind == "global" else f" ({kind} {views[0]})"


def _cleaned(lens: "LogitLens", layer: int, row: int, image: int, view: int) -> tuple[np.ndarray, np.ndarray]:
    """The view's word grid with tokenizer pieces shown as text (blank where no token sits)."""
    words, probs = lens.word_grid(layer, row, image, view)
    shown = np.array([display_token(word).strip() if word else "" for word in words.flat], dtype=object)
    return shown.reshape(words.shape), probs


def _draw_view(axes, grid_view, words: np.ndarray, probs: np.ndarray, shade, short: dict[str, str],
               font: float) -> None:
    """Shaded cells and their words over one view's box."""
    x0, y0, x1, y1 = grid_view.box
    height, width = (y1 - y0) / grid_view.rows, (x1 - x0) / grid_view.cols
    for (r, c), word in np.ndenumerate(words):
        if not word:
            continue
        p = float(probs[r, c])
        left, top = x0 + c * width, y0 + r * height
        axes.add_patch(Rectangle((left, top), width, height, facecolor=shade(p), alpha=0.55,
                                 edgecolor="white", linewidth=0.4))
        axes.text(left + width / 2, top + height / 2, short.get(word, word), ha="center", va="center",
                  fontsize=font, color="white" if p > 0.5 else "black")
