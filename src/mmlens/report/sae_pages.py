"""SAE latent dashboards as HTML: an index page and one self-contained page per latent.

Each latent page shows its automatic label, its top image patches as crops of
their images with the latent's activation over them, its top text tokens in
context, the activation histogram, the modality mix and the tokens it
promotes and suppresses through the unembedding. Crops and figures are PNG
data URIs (:func:`~mmlens.report.figures.png_data_uri`), so each page opens
offline with nothing beside it. Reads :class:`~mmlens.sae.dashboard.LatentDashboard`
data only; images come from ``load(shard, sample)``
(:func:`mmlens.sae.codes.store_samples`).

Example:
    >>> from mmlens.sae.dashboard import LatentDashboard
    >>> board = LatentDashboard(3, "lm.L2.resid", 0, 0.0, {"image": 0.0, "text": 0.0, "special": 0.0}, ([0], [0.0, 1.0]))
    >>> write_sae_pages([board], "/tmp/sae-pages", load=None).name
    'index.html'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import jinja2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from mmlens.report.figures import SEQUENTIAL_CMAP, png_data_uri, visible_token
from mmlens.report.page import PAGE_HEAD

CROP_SIDE = 160  # pixels each crop is drawn at
HEAT_ALPHA = 0.55


def latent_page_name(latent: int) -> str:
    """The file name of a latent's page, ``latent-00017.html``.

    Example:
        >>> latent_page_name(17)
        'latent-00017.html'
    """
    return f"latent-{latent:05d}.html"


def write_sae_pages(boards: Sequence[Any], folder: str | Path, load: Callable[[str, int], Any] | None,
                    title: str = "SAE latents", facts: dict[str, Any] | None = None, crop_patches: int = 4) -> Path:
    """Write ``index.html`` and one page per dashboard into ``folder``; returns the index's path.

    ``crop_patches``: each crop is this many patches wide, centred on the
    latent's strongest patch (the whole image when the grid is smaller).
    ``facts`` (e.g. the SAE's configuration) head the index.

    Example:
        >>> write_sae_pages(boards, "out/dash", store_samples(store))  # doctest: +SKIP
        PosixPath('out/dash/index.html')
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for board in boards:
        page = latent_page(board, load, title, crop_patches)
        (folder / latent_page_name(board.latent)).write_text(page, encoding="utf-8")
        rows.append({"latent": board.latent, "href": latent_page_name(board.latent),
                     "label": board.label.text() if board.label else "", "frequency": f"{100 * board.frequency:.2f}%",
                     "mix": _mix_text(board.modality_mix),
                     "promoted": ", ".join(visible_token(t) for t, _ in board.promoted[:3])})
    index = folder / "index.html"
    index.write_text(_INDEX.render(title=title, rows=rows, facts=facts or {}), encoding="utf-8")
    return index


def latent_page(board: Any, load: Callable[[str, int], Any] | None, title: str = "SAE latents",
                crop_patches: int = 4) -> str:
    """One latent's page as an HTML string."""
    scale = max([ex.value for ex in board.top_images] + [ex.value for ex in board.top_texts] + [1e-6])
    crops = []
    for ex in board.top_images:
        if load is None:
            break
        image = load(ex.shard, ex.sample).image
        crops.append({"uri": png_data_uri(heat_crop(image, ex.heat, ex.patch, scale, crop_patches)),
                      "caption": f"{ex.sample_id} · patch ({ex.patch[0]}, {ex.patch[1]}) · {ex.value:.3g}"})
    texts = [{"sample": ex.sample_id, "value": f"{ex.value:.3g}",
              "tokens": [{"text": visible_token(t), "style": _shade(v, scale), "focus": i == ex.focus}
                         for i, (t, v) in enumerate(zip(ex.tokens, ex.values))]} for ex in board.top_texts]
    return _LATENT.render(title=f"{title}: latent {board.latent}", board=board, crops=crops, texts=texts,
                          label=board.label.text() if board.label else "no label (no concepts given)",
                          histogram=png_data_uri(histogram_figure(board.histogram)) if board.fires else None,
                          mix=[(m, f"{100 * s:.0f}%", 100 * s) for m, s in board.modality_mix.items()],
                          frequency=f"{100 * board.frequency:.2f}%")


def heat_crop(image: Image.Image, heat: np.ndarray, patch: tuple[int, int], scale: float,
              crop_patches: int = 4, side: int = CROP_SIDE) -> Image.Image:
    """A crop of ``image`` around ``patch`` with ``heat`` (one value per patch, 0 = clear) drawn over it.

    The strongest patch gets a black outline; colours run from white (0) to
    dark red (``scale``) on the sequential map the other reports use, and
    their opacity grows with the activation.

    Example:
        >>> heat = np.zeros((8, 8)); heat[2, 3] = 1.0
        >>> heat_crop(Image.new("RGB", (64, 64), "grey"), heat, (2, 3), 1.0).size
        (160, 160)
    """
    pixels = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    height, width = pixels.shape[:2]
    rows, cols = heat.shape
    ph, pw = height / rows, width / cols
    # nearest-neighbour upsampling: each patch covers its own pixels exactly
    up = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((width, height), Image.NEAREST))
    strength = np.clip(up / max(scale, 1e-12), 0, 1)
    colours = matplotlib.colormaps[SEQUENTIAL_CMAP](strength)[..., :3]
    alpha = (HEAT_ALPHA * strength)[..., None]  # weak activations stay nearly clear: the object shows through
    blended = Image.fromarray((255 * ((1 - alpha) * pixels + alpha * colours)).round().astype(np.uint8))
    n = min(crop_patches, rows, cols)
    r0 = int(np.clip(patch[0] - (n - 1) // 2, 0, rows - n))
    c0 = int(np.clip(patch[1] - (n - 1) // 2, 0, cols - n))
    box = (round(c0 * pw), round(r0 * ph), round((c0 + n) * pw), round((r0 + n) * ph))
    crop = blended.crop(box).resize((side, side), Image.NEAREST)
    zoom_x, zoom_y = side / (box[2] - box[0]), side / (box[3] - box[1])
    x0 = (patch[1] * pw - box[0]) * zoom_x
    y0 = (patch[0] * ph - box[1]) * zoom_y
    ImageDraw.Draw(crop).rectangle((x0, y0, x0 + pw * zoom_x - 1, y0 + ph * zoom_y - 1), outline="black", width=2)
    return crop


def histogram_figure(histogram: tuple[Sequence[int], Sequence[float]], dpi: int = 100) -> Figure:
    """Bars of the non-zero activations' histogram (counts, bin edges).

    Example:
        >>> len(histogram_figure(([1, 2], [0.0, 0.5, 1.0])).axes)
        1
    """
    counts, edges = np.asarray(histogram[0]), np.asarray(histogram[1])
    figure = Figure(figsize=(4.2, 1.8), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.13, 0.25, 0.84, 0.68))
    axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#d62728", edgecolor="white")
    axes.set_xlabel("activation (non-zero)", fontsize=8)
    axes.set_ylabel("tokens", fontsize=8)
    axes.tick_params(labelsize=7)
    return figure


def _shade(value: float, scale: float) -> str:
    strength = min(max(value, 0.0) / scale, 1.0) * 0.6 if scale > 0 else 0.0  # dark text stays readable
    return f"background: rgba(214, 39, 40, {strength:.3f})" if strength > 0 else ""


def _mix_text(mix: dict[str, float]) -> str:
    return " / ".join(f"{m} {100 * s:.0f}%" for m, s in mix.items())


_ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)

_STYLE = """\
  section { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 16px 20px; margin-bottom: 18px; }
  h2 { font-size: 16px; margin: 0 0 10px; }
  a { color: #1f5fbf; }
  table { border-collapse: collapse; font-size: 13px; }
  th, td { border-bottom: 1px solid #eee; padding: 3px 10px; text-align: left; }
  .label { font-size: 17px; font-weight: 600; }
  .crops { display: flex; flex-wrap: wrap; gap: 12px; }
  figure.crop { margin: 0; width: 160px; }
  figure.crop img { width: 160px; height: 160px; image-rendering: pixelated; border: 1px solid #ddd; }
  figcaption { color: #666; font-size: 11px; }
  .context { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; margin: 4px 0; }
  .context span { padding: 1px 3px; border-radius: 3px; }
  .context span.focus { outline: 2px solid #222; }
  .bar { display: inline-block; height: 12px; background: #d62728; vertical-align: middle; }
  .tokens { display: flex; gap: 40px; }
</style>
</head>
<body>
<main>
"""

_INDEX = _ENV.from_string(PAGE_HEAD + _STYLE + """\
<h1>{{ title }}</h1>
{% if facts %}<section><table>{% for k, v in facts.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</table></section>{% endif %}
<section>
<table class="latents">
  <tr><th>latent</th><th>label</th><th>fires on</th><th>modality mix</th><th>promotes</th></tr>
  {% for r in rows %}
  <tr><td><a href="{{ r.href }}">{{ r.latent }}</a></td><td>{{ r.label }}</td><td>{{ r.frequency }}</td>
      <td>{{ r.mix }}</td><td>{{ r.promoted }}</td></tr>
  {% endfor %}
</table>
</section>
</main>
</body>
</html>
""")

_LATENT = _ENV.from_string(PAGE_HEAD + _STYLE + """\
<p><a href="index.html">all latents</a></p>
<h1>{{ title }}</h1>
<section>
  <p class="label">{{ label }}</p>
  <p>site {{ board.site }} · fires on {{ board.fires }} tokens ({{ frequency }})</p>
  <table class="mix">
    {% for m, text, width in mix %}<tr><td>{{ m }}</td><td><span class="bar" style="width: {{ width }}px"></span>
    {{ text }}</td></tr>{% endfor %}
  </table>
  {% if histogram %}<figure><img class="histogram" src="{{ histogram }}" alt="activation histogram"></figure>{% endif %}
</section>
<section>
  <h2>Top image patches</h2>
  {% if not crops %}<p>no image patch activates this latent</p>{% endif %}
  <div class="crops">
  {% for c in crops %}<figure class="crop"><img src="{{ c.uri }}" alt="{{ c.caption }}">
    <figcaption>{{ c.caption }}</figcaption></figure>{% endfor %}
  </div>
</section>
<section>
  <h2>Top text tokens</h2>
  {% if not texts %}<p>no text token activates this latent</p>{% endif %}
  {% for t in texts %}<p class="context" title="{{ t.sample }}">{% for w in t.tokens %}<span style="{{ w.style }}"
    {% if w.focus %}class="focus"{% endif %}>{{ w.text }}</span> {% endfor %}<small>{{ t.value }}</small></p>
  {% endfor %}
</section>
<section>
  <h2>Tokens through the unembedding</h2>
  <div class="tokens">
    <table class="promoted"><tr><th>promotes</th><th></th></tr>
      {% for t, v in board.promoted %}<tr><td>{{ t }}</td><td>{{ "%+.3f"|format(v) }}</td></tr>{% endfor %}</table>
    <table class="suppressed"><tr><th>suppresses</th><th></th></tr>
      {% for t, v in board.suppressed %}<tr><td>{{ t }}</td><td>{{ "%+.3f"|format(v) }}</td></tr>{% endfor %}</table>
  </div>
</section>
</main>
</body>
</html>
""")

__all__ = ["heat_crop", "histogram_figure", "latent_page", "latent_page_name", "write_sae_pages"]
