"""Static figures: heatmap overlays on images and layer-by-component grids.

Everything draws on a bare :class:`matplotlib.figure.Figure` with the Agg
canvas, never pyplot, so rendering works headless and leaves no global state.

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> figure = overlay_figure(Image.new("RGB", (64, 48)), np.random.rand(48, 64), "demo")
    >>> png_data_uri(figure).startswith("data:image/png;base64,")
    True
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image

from mmlens.report.score_names import score_label, target_title

if TYPE_CHECKING:  # report code only reads explanations; no model import at runtime
    from mmlens.attribution.explanation import Explanation

SIGNED_CMAP = "RdBu_r"  # diverging, white at zero: scores of both signs (IG, occlusion, gradient x input)
SEQUENTIAL_CMAP = "Reds"  # non-negative scores (attention, rollout, relevancy): white at zero, as in SIGNED_CMAP


def overlay_figure(
    image: Image.Image,
    heatmap: np.ndarray,
    title: str,
    cmap: str | None = None,
    alpha: float = 0.5,
    *,
    width: float = 4.0,
    dpi: int = 100,
    max_side: int | None = 512,
    signed: bool | None = None,
    label: str | None = None,
) -> Figure:
    """The image with ``heatmap`` (same pixel size, NaN = transparent) drawn over it, plus a colour bar.

    ``label`` names what the colour bar measures (see
    :func:`mmlens.report.score_names.score_label`).

    Signed scores (``signed``, or by default: the heatmap has negative
    values) use the diverging ``RdBu_r`` map with limits symmetric about zero,
    so zero is white, positive red and negative blue; non-negative scores use
    the sequential ``Reds`` map from 0 (white, as above) to their maximum.
    ``cmap`` overrides the map (its range is then the data's). ``width`` is in
    inches; ``max_side`` downsamples big images first (the figure is a few
    hundred pixels wide anyway, and drawing is faster).

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> heat = np.full((32, 32), np.nan); heat[:, 16:] = 1.0
        >>> figure = overlay_figure(Image.new("RGB", (32, 32), "green"), heat, "right half")
        >>> len(figure.axes)  # image and colour bar
        2
    """
    pixels = np.asarray(image.convert("RGB"))
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != pixels.shape[:2]:
        raise ValueError(f"heatmap of shape {heatmap.shape} for an image of size {pixels.shape[:2]}")
    pixels, heatmap = _downsample(pixels, heatmap, max_side)
    height, width_px = heatmap.shape
    # Fixed margins instead of constrained layout, which costs most of the drawing time.
    # The image and its colour bar (0.8 in with labels) sit centred; tall images get narrower.
    if label and len(label) > 34:  # two short lines stay legible beside a bar a few inches tall
        label = label.replace(": ", ":\n", 1)
    bar_in, title_in, bottom_in = 0.8 + 0.17 * (label or "").count("\n") + (0.2 if label else 0.0), 0.3, 0.08
    aspect = min(height / width_px, 2.5)  # taller images are letterboxed inside the box
    image_w = (width - 0.1 - bar_in) * min(1.0, 1.0 / aspect)
    image_h = image_w * aspect
    figure_h = image_h + title_in + bottom_in
    left = (width - image_w - bar_in) / 2
    figure = Figure(figsize=(width, figure_h), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((left / width, bottom_in / figure_h, image_w / width, image_h / figure_h))
    bar_axes = figure.add_axes(((left + image_w + 0.1) / width, bottom_in / figure_h, 0.15 / width, image_h / figure_h))
    figure.suptitle(title, fontsize=9, y=1 - 0.06 / figure_h, va="top")
    axes.imshow(pixels, interpolation="bilinear")
    # Pixels no view covers (NaN) show the plain image.
    masked = np.ma.masked_invalid(heatmap)
    if signed is None:
        signed = masked.count() > 0 and float(masked.min()) < 0
    colours = matplotlib.colormaps[cmap or (SIGNED_CMAP if signed else SEQUENTIAL_CMAP)]
    colours = colours.with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    low, high = _limits(masked)
    if cmap is None and signed:
        low, high = _symmetric_limits(masked)
    elif cmap is None and low >= 0:
        low, high = 0.0, max(high, 1e-6)  # zero is white
    shown = axes.imshow(masked, cmap=colours, alpha=alpha, vmin=low, vmax=high, interpolation="nearest")
    axes.set_axis_off()
    bar = figure.colorbar(shown, cax=bar_axes)
    bar.solids.set_alpha(1.0)  # the bar shows the colours, not their blend with the image
    bar.ax.tick_params(labelsize=7)
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))  # no offset text
    if label:
        bar.set_label(label, fontsize=7)
    return figure


def save_overlays(explanation: "Explanation", folder: str | Path, dpi: int = 100) -> list[Path]:
    """Write one overlay PNG per (method, answer token, image) into ``folder``; returns the paths.

    Files are named ``{method}_t{j}_{token}_img{i}.png`` (``{token}_vs_{foil}``
    in a contrast run), tokens reduced to safe filename characters. Each
    colour bar says what the method measures; contrast titles read
    ``'red' vs 'purple'``.

    Example:
        >>> import mmlens
        >>> from PIL import Image
        >>> e = mmlens.explain(mmlens.load("tiny-llava"), "<image> hi", [Image.new("RGB", (64, 64))],
        ...                    methods=["rollout"], max_new_tokens=1)
        >>> [p.name[:11] for p in save_overlays(e, "/tmp/overlays")]
        ['rollout_t0_']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for method in explanation.methods:
        signed = explanation.signed(method)
        for j, token in enumerate(explanation.answer_tokens):
            shown, foil = visible_token(token), explanation.foil
            label = score_label(method, shown, None if foil is None else visible_token(foil))
            name = safe_token(token) + ("" if foil is None else f"_vs_{safe_token(foil)}")
            for i, heatmap in enumerate(explanation.heatmaps(method, j)):
                title = f"{method} · {target_title(shown, None if foil is None else visible_token(foil))} · image {i}"
                figure = overlay_figure(explanation.images[i], heatmap, title, dpi=dpi, signed=signed, label=label)
                path = folder / f"{method}_t{j}_{name}_img{i}.png"
                figure.savefig(path, format="png")
                paths.append(path)
    return paths


def png_data_uri(
    figure_or_array: Figure | np.ndarray | Image.Image, dpi: int | None = None, palette: bool = False
) -> str:
    """A ``data:image/png;base64,...`` URI of a figure, an image array (uint8, or floats in [0, 1]) or a PIL image.

    ``palette`` stores 256 colours instead of full RGB: about three times
    smaller, at the cost of slight banding in smooth colour bars.

    Example:
        >>> import numpy as np
        >>> png_data_uri(np.zeros((4, 4, 3), dtype=np.uint8))[:22]
        'data:image/png;base64,'
    """
    if isinstance(figure_or_array, Figure):
        buffer = io.BytesIO()
        figure_or_array.savefig(buffer, format="png", dpi=dpi or figure_or_array.dpi)
        if not palette:
            return _uri(buffer.getvalue())
        buffer.seek(0)
        image = Image.open(buffer)
    elif isinstance(figure_or_array, np.ndarray):
        array = figure_or_array
        if array.dtype != np.uint8:
            array = (np.clip(np.nan_to_num(array.astype(np.float64)), 0.0, 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    else:
        image = figure_or_array
    if palette:
        # Fast octree quantisation takes about a millisecond; median cut is hundreds of times slower.
        image = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _uri(buffer.getvalue())


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def layer_grid_figure(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    cbar_label: str,
    cmap: str | None = None,
    dpi: int = 100,
    centred: bool = False,
) -> Figure:
    """A ``(layers, components)`` matrix as a labelled heatmap grid with a colour bar.

    Signed data gets a diverging map centred on zero, otherwise ``viridis``
    (override with ``cmap``). ``centred`` always uses the diverging map
    centred on zero, so a change keeps one colour rule whatever its signs.
    Colour-bar ticks are written out in full (no ``1e-5`` offset text above
    the bar). Used for causal-tracing and logit-lens grids.

    Example:
        >>> import numpy as np
        >>> figure = layer_grid_figure(np.random.rand(4, 3), ["L0", "L1", "L2", "L3"],
        ...                            ["resid", "attn", "mlp"], "restored effect", "probability")
        >>> figure.axes[0].images[0].get_array().shape
        (4, 3)
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    rows, cols = matrix.shape
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"{len(row_labels)} row and {len(col_labels)} column labels for a {rows}x{cols} matrix")
    finite = matrix[np.isfinite(matrix)]
    signed = centred or (finite.size > 0 and finite.min() < 0 < finite.max())
    name = cmap or ("RdBu_r" if signed else "viridis")
    colours = matplotlib.colormaps[name].with_extremes(bad=(0.85, 0.85, 0.85, 1.0))  # missing cells in grey
    if signed:
        bound = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-12)
        low, high = -bound, bound
    else:
        low, high = _limits(np.ma.masked_invalid(matrix))
    # Cells stay readable whether there are 4 or 80 layers.
    size = (min(max(2.2 + 0.45 * cols, 4.0), 16.0), min(max(1.2 + 0.22 * rows, 3.0), 14.0))
    figure = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = axes.imshow(np.ma.masked_invalid(matrix), cmap=colours, vmin=low, vmax=high, aspect="auto",
                        interpolation="nearest")
    axes.set_xticks(range(cols), [str(label) for label in col_labels], rotation=45 if cols > 6 else 0,
                    ha="right" if cols > 6 else "center", fontsize=8)
    step = max(1, rows // 40)  # thin the layer labels when they would overlap
    axes.set_yticks(range(0, rows, step), [str(row_labels[r]) for r in range(0, rows, step)], fontsize=8)
    axes.set_title(title, fontsize=10)
    bar = figure.colorbar(shown, ax=axes)
    bar.set_label(cbar_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))  # no offset text
    return figure


def display_token(token: str) -> str:
    """A tokenizer piece as text: SentencePiece ``▁`` and byte-BPE ``Ġ``/``Ċ`` become spaces and newlines.

    Example:
        >>> display_token("▁colour"), display_token("Ġred")
        (' colour', ' red')
    """
    return token.replace("▁", " ").replace("Ġ", " ").replace("Ċ", "\n")


def token_text(model: Any, token_id: int) -> str:
    """One token of ``model``'s vocabulary as a reader sees it, without surrounding spaces.

    Example:
        >>> token_text(mmlens.load("shapes-llava"), 5)  # doctest: +SKIP
        'red'
    """
    return display_token(model.tokenizer.decode([token_id])).strip()


def visible_token(token: str, strip: bool = True) -> str:
    """A tokenizer piece as it should show on a page: newlines as ``↵``, tabs as ``⇥``, never blank.

    ``strip`` drops the surrounding spaces; a token of spaces only shows as ``␣``.

    Example:
        >>> visible_token("Ċ"), visible_token("▁red"), visible_token("▁")
        ('↵', 'red', '␣')
    """
    shown = display_token(token).replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵").replace("\t", "⇥")
    if strip:
        shown = shown.strip(" ")
    return shown or "␣"


def safe_token(token: str, limit: int = 24) -> str:
    """A token reduced to filename-safe characters (``tok`` when nothing is left).

    Example:
        >>> safe_token(" red?"), safe_token("?")
        ('red', 'tok')
    """
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", display_token(token)).strip("_")
    return cleaned[:limit] or "tok"


def _limits(masked: np.ma.MaskedArray) -> tuple[float, float]:
    """Colour range of the known values; a flat map gets a tiny range so it still draws."""
    if masked.count() == 0:
        return 0.0, 1.0
    low, high = float(masked.min()), float(masked.max())
    if high - low < 1e-12:
        return low - 0.5e-6, high + 0.5e-6
    return low, high


def _symmetric_limits(masked: np.ma.MaskedArray) -> tuple[float, float]:
    """Colour range ``(-m, m)``, ``m`` the largest magnitude, so zero sits at the map's centre."""
    bound = float(np.abs(masked).max()) if masked.count() else 0.0
    bound = bound if bound > 1e-12 else 1e-6
    return -bound, bound


def _downsample(pixels: np.ndarray, heatmap: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Shrink image and heatmap together (nearest pixels keeps NaN regions sharp)."""
    height, width = heatmap.shape
    if max_side is None or max(height, width) <= max_side:
        return pixels, heatmap
    scale = max_side / max(height, width)
    ys = np.minimum((np.arange(max(1, round(height * scale))) + 0.5) / scale, height - 1).astype(int)
    xs = np.minimum((np.arange(max(1, round(width * scale))) + 0.5) / scale, width - 1).astype(int)
    small = Image.fromarray(pixels).resize((len(xs), len(ys)), Image.Resampling.LANCZOS)
    return np.asarray(small), heatmap[np.ix_(ys, xs)]
