"""Rendering of explanations: overlay PNGs, grid figures and a self-contained HTML report.

Knows nothing about models; it only reads :class:`~mmlens.attribution.Explanation`
objects and plain arrays.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> e = mmlens.explain(mmlens.load("tiny-llava"), [Image.new("RGB", (64, 64))], "<image> hi",
    ...                    methods=["rollout"], max_new_tokens=1)
    >>> write_html_report(e, "/tmp/report.html").name
    'report.html'
"""

from mmlens.report.figures import layer_grid_figure, overlay_figure, png_data_uri, save_overlays
from mmlens.report.html import write_html_report

__all__ = ["layer_grid_figure", "overlay_figure", "png_data_uri", "save_overlays", "write_html_report"]
