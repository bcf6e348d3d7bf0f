"""Rendering and storage of results: overlay PNGs, grid figures, a self-contained HTML report, files.

Knows nothing about models; it only reads result objects
(:class:`~mmlens.attribution.Explanation`, :class:`~mmlens.neurons.NeuronSet`, ...)
and plain arrays. :mod:`~mmlens.report.files` writes and reads them on disk.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> e = mmlens.explain(mmlens.load("tiny-llava"), "<image> hi", [Image.new("RGB", (64, 64))],
    ...                    methods=["rollout"], max_new_tokens=1)
    >>> write_html_report(e, "/tmp/report.html").name
    'report.html'
"""

from mmlens.report.figures import layer_grid_figure, overlay_figure, png_data_uri, save_overlays
from mmlens.report.files import (
    load_neuron_set,
    load_weight_set,
    save_explanation,
    save_neuron_set,
    save_weight_set,
)
from mmlens.report.html import write_html_report

__all__ = [
    "layer_grid_figure",
    "load_neuron_set",
    "load_weight_set",
    "overlay_figure",
    "png_data_uri",
    "save_explanation",
    "save_neuron_set",
    "save_overlays",
    "save_weight_set",
    "write_html_report",
]
