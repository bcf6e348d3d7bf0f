"""One self-contained HTML page per set of explanations: images, prompt, answer, and per-token heatmaps.

Every overlay is rendered to a PNG in Python and embedded as a data URI; the
page's small script only switches which precomputed view is visible, so the
file opens anywhere, offline, with nothing else beside it.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> e = mmlens.explain(mmlens.load("tiny-llava"), "<image> hi", [Image.new("RGB", (64, 64))],
    ...                    methods=["attention", "rollout"], max_new_tokens=2)
    >>> write_html_report(e, "/tmp/report.html").stat().st_size > 0
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import torch

from mmlens.attribution.explanation import abs_sum
from mmlens.layout import Modality
from mmlens.report.figures import overlay_figure, png_data_uri, visible_token
from mmlens.report.score_names import score_label, target_title
from mmlens.report.page import PAGE_HEAD

if TYPE_CHECKING:
    from mmlens.attribution.explanation import Explanation

_TOP_WORDS = 8  # rows of the per-token word table
_THUMBNAIL = 256  # longest side of the original images shown, in pixels


def write_html_report(
    explanations: "Explanation | list[Explanation]", path: str | Path, dpi: int = 80, compact: bool = False
) -> Path:
    """Write one self-contained HTML report for one or several explanations; returns its path.

    Hovering an answer token previews its heatmaps and prompt-word scores,
    clicking pins it; the method buttons switch attribution method. Each
    sample says what was explained (the model's own answer, any target and
    foil, whether the answer was teacher-forced) and how the image share is
    defined. Images, answer tokens and samples are numbered from 0, as in
    ``explanation.json``, file names and ``mmlens info``.
    ``compact`` stores overlays as 256-colour PNGs, about a third of the size,
    with slight banding in the colour bars.

    Example:
        >>> import mmlens
        >>> from PIL import Image
        >>> e = mmlens.explain(mmlens.load("tiny-llava"), "<image> hi", [Image.new("RGB", (64, 64))],
        ...                    methods=["rollout"], max_new_tokens=1)
        >>> write_html_report([e, e], "/tmp/two.html").suffix
        '.html'
    """
    if not isinstance(explanations, (list, tuple)):
        explanations = [explanations]
    samples = [_sample(k, e, dpi, compact) for k, e in enumerate(explanations)]
    models = sorted({e.model for e in explanations})
    html = _TEMPLATE.render(samples=samples, title=f"mmlens · {', '.join(models)}",
                            image_share=explanations[0].IMAGE_SHARE if explanations else "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def _sample(index: int, e: "Explanation", dpi: int, compact: bool) -> dict[str, Any]:
    """Everything the template needs for one explanation, as plain strings and numbers."""
    thumbnails = []
    for image in e.images:
        small = image.convert("RGB")
        small.thumbnail((_THUMBNAIL, _THUMBNAIL))
        thumbnails.append({"uri": png_data_uri(small), "size": f"{image.width}×{image.height}"})
    views = []
    for method in e.methods:
        signed = e.signed(method)
        for j, token in enumerate(e.answer_tokens):
            overlays = []
            shown, foil = visible_token(token), None if e.foil is None else visible_token(e.foil)
            label = score_label(method, shown, foil)
            for i, heatmap in enumerate(e.heatmaps(method, j)):
                title = f"{method} · {target_title(shown, foil)} · image {i}"
                figure = overlay_figure(e.images[i], heatmap, title, width=4.0, dpi=dpi, max_side=320, signed=signed,
                                        label=label)
                overlays.append(png_data_uri(figure, palette=compact))
            scores = _target_scores(e, method, j)
            views.append({"method": method, "target": j, "shown": not views, "overlays": overlays,
                          "words": shaded_words(e, method, j, scores), "table": _top_words(e, method, j, scores),
                          "caption": _caption(e, method, j, e.image_share(method, j))})
    return {
        "id": f"sample-{index}",
        "index": index,
        "model": e.model,
        "prompt": e.prompt,
        "answer": e.answer,
        "explained": what_was_explained(e),
        "teacher_forced": e.teacher_forced,
        "tokens": [visible_token(t) for t in e.answer_tokens],
        "methods": e.methods,
        "images": thumbnails,
        "views": views,
    }


def what_was_explained(e: "Explanation") -> list[tuple[str, str]]:
    """``(label, text)`` lines saying what was explained: the model's own answer, any target and foil.

    The terminal summary and the HTML report show the same lines.

    Example:
        >>> what_was_explained(explanation)
        [('answer', 'purple')]
        >>> [label for label, _ in what_was_explained(forced)]  # explain(..., answer="red", foil="blue")
        ['answer', 'target', 'foil']
        >>> what_was_explained(forced)[0]
        ('answer', "purple (the model's own)")
    """
    lines = []
    if not e.teacher_forced:
        lines.append(("answer", e.answer))
    else:
        own = e.model_answer if e.model_answer is not None else "not recorded"
        lines.append(("answer", f"{own} (the model's own)"))
        same = e.model_answer is not None and e.model_answer.strip() == e.answer.strip()
        how = "the model gives this answer too" if same else "explained instead of the model's answer"
        lines.append(("target", f"{e.answer} (teacher-forced: {how})"))
    if e.foil is not None:
        explained = "target" if e.teacher_forced else "answer"
        lines.append(("foil", f"{e.foil} (scores are logit({explained}) - logit(foil))"))
    return lines


def shaded_words(e: "Explanation", method: str, target: int, scores: np.ndarray | None = None) -> list[dict]:
    """The sequence answer token ``target`` sees: text shaded by score, one chip per image.

    A tiled image (tiles and a global view, e.g. idefics3, llava-next) is
    one chip with its share of ``|score|``; its views and their shares show on
    hover. Newlines show as ``↵``. ``scores`` are the target's scores as
    float32 numpy, when the caller has them already (the web API does).

    Example:
        >>> [w["kind"] for w in shaded_words(explanation, "rollout", 0)][:3]  # "<image> what colour ..."
        ['chip', 'word', 'word']
    """
    scores = _target_scores(e, method, target) if scores is None else scores
    text, image = _seen(e, target, len(scores))
    scale = _scale(scores[text])
    total = abs_sum(scores[text | image])  # as in Explanation.image_share
    # Word-level vocabularies carry no space markers: put spaces back between pieces.
    words_at = np.flatnonzero(text).tolist()
    spaced = not any(mark in e.tokens[p] for p in words_at for mark in ("▁", "Ġ"))
    # Only text positions and each image's first position make an entry: no Python loop over every patch.
    at_image = np.flatnonzero(image)
    first: dict[int, int] = {}  # image -> its first position
    for p, i in zip(at_image.tolist(), e.layout.image[0].numpy()[at_image].tolist()):
        first.setdefault(i, p)
    chips = {p: i for i, p in first.items()}
    values = scores.tolist()
    words: list[dict] = []
    for p in sorted([*words_at, *chips]):
        if p in chips:  # one chip per image, wherever its tiles sit
            words.append(_image_chip(e, scores, image, chips[p], total))
            continue
        piece = visible_token(e.tokens[p], strip=False)
        if spaced and words:
            piece = " " + piece
        words.append({"kind": "word", "text": piece, "title": f"{e.tokens[p]!r}: {values[p]:.4g}",
                      "style": _shade(values[p], scale)})
    return words


def _top_words(e: "Explanation", method: str, target: int, scores: np.ndarray | None = None) -> list[dict]:
    """The report's table of the text tokens with the largest ``|score|`` that answer token ``target`` sees."""
    scores = _target_scores(e, method, target) if scores is None else scores
    text, _ = _seen(e, target, len(scores))
    positions = np.flatnonzero(text)
    scale = _scale(scores[positions])
    ranked = positions[np.argsort(-np.abs(np.nan_to_num(scores[positions])), kind="stable")[:_TOP_WORDS]]
    values = scores.tolist()
    return [{"text": visible_token(e.tokens[p]), "position": p, "score": f"{values[p]:.4g}",
             "width": 0 if scale == 0 or not math.isfinite(values[p]) else round(100 * abs(values[p]) / scale),
             "negative": values[p] < 0} for p in ranked.tolist()]


def _scale(text_scores: np.ndarray) -> float:
    """The largest ``|score|`` of the text, which gets full shading (0: none finite, or no text)."""
    scale = float(np.fmax.reduce(np.abs(text_scores))) if text_scores.size else 0.0  # fmax skips NaN
    return scale if math.isfinite(scale) else 0.0


def _target_scores(e: "Explanation", method: str, target: int) -> np.ndarray:
    return e.scores[method][target].detach().float().cpu().numpy()


def _seen(e: "Explanation", target: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the text and image positions answer token ``target`` sees (itself and what comes before)."""
    modality = e.layout.modality[0].numpy()
    visible = np.arange(length) <= e.positions[target]
    return visible & (modality == int(Modality.TEXT)), visible & (modality == int(Modality.IMAGE))


def _image_chip(e: "Explanation", scores: np.ndarray, image: np.ndarray, i: int, total: float) -> dict:
    """The chip of image ``i``: its share of ``|score|``; on hover, each view (tile, global view) with its share."""
    def share(mask: np.ndarray) -> float:
        return abs_sum(scores[mask]) / total if total > 0 else math.nan

    mine = image & (e.layout.image[0].numpy() == i)
    lines = [f"image {i}: {int(mine.sum())} patches · {_percent(share(mine))} of |score|"]
    views = e.layout.images[0][i].views
    if len(views) > 1:
        view_of = e.layout.view[0].numpy()
        for v, view in enumerate(views):
            part = mine & (view_of == v)
            lines.append(f"  {view.kind} {v} ({view.rows}×{view.cols}): {int(part.sum())} patches · "
                         f"{_percent(share(part))}")
    text = f"image {i} · {_percent(share(mine))}" + (f" · {len(views)} views" if len(views) > 1 else "")
    return {"kind": "chip", "style": "", "text": text, "title": "\n".join(lines), "views": len(views)}


def _shade(score: float, scale: float) -> str:
    """Background for a word: red for positive scores, blue for negative, opacity by magnitude."""
    if scale <= 0 or not math.isfinite(score):
        return ""
    strength = min(abs(score) / scale, 1.0) * 0.6  # dark text stays readable
    colour = "214, 39, 40" if score >= 0 else "31, 119, 180"
    return f"background: rgba({colour}, {strength:.3f})"


def _caption(e: "Explanation", method: str, target: int, image_share: float) -> str:
    """Timing, the image tokens' share of attribution and any scalar extras, e.g. IG completeness error."""
    parts = [method]
    if method in e.milliseconds:
        parts.append(f"{e.milliseconds[method]:.0f} ms per sample")
    if math.isfinite(image_share):
        parts.append(f"image share {_percent(image_share)}")
    for key, value in e.extras.get(method, {}).items():
        shown = _extra(value, target, len(e.answer_tokens))
        if shown is not None:
            parts.append(f"{key.replace('_', ' ')} {shown}")
    return " · ".join(parts)


def _extra(value: Any, target: int, targets: int) -> str | None:
    """A short text for a scalar extra (or this target's entry of a per-target vector); None for bulky ones."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            value = value.item()
        elif value.ndim == 1 and value.numel() == targets:
            value = value[target].item()
        else:
            return None
    if isinstance(value, (bool, int, str)):
        return str(value) if len(str(value)) <= 40 else None
    if isinstance(value, float):
        return f"{value:.3g}"
    return None


def _percent(share: float) -> str:
    return "–" if not math.isfinite(share) else f"{100 * share:.0f}%"


_TEMPLATE = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(PAGE_HEAD + """\
  nav a { margin-right: 12px; color: #1f5fbf; }
  section.sample { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 18px 22px;
                   margin-bottom: 24px; }
  h2 { font-size: 16px; margin: 0 0 10px; }
  h2 small { color: #777; font-weight: normal; }
  .label { color: #777; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; margin-right: 8px; }
  .row { margin: 8px 0; }
  .originals { display: flex; gap: 12px; flex-wrap: wrap; }
  .originals figure { margin: 0; font-size: 12px; color: #777; text-align: center; }
  .originals img { display: block; border: 1px solid #ddd; border-radius: 4px; max-height: 160px; }
  .prompt { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; background: #f3f4f6;
            padding: 4px 8px; border-radius: 4px; }
  button { font: inherit; cursor: pointer; border: 1px solid #ccd; background: #fff; border-radius: 14px;
           padding: 2px 11px; margin: 2px 3px 2px 0; }
  button:hover { border-color: #1f5fbf; }
  button.active { background: #1f5fbf; border-color: #1f5fbf; color: #fff; }
  button.tok { font-family: ui-monospace, Menlo, Consolas, monospace; border-radius: 4px; }
  .overlays { display: flex; gap: 12px; flex-wrap: wrap; margin: 12px 0 6px; }
  .overlays img { border: 1px solid #eee; border-radius: 4px; }
  .words { white-space: pre-wrap; line-height: 1.9; font-family: ui-monospace, Menlo, Consolas, monospace;
           margin: 8px 0; }
  .words span { border-radius: 3px; padding: 1px 1px; }
  .words .chip { background: #eceff3; border: 1px dashed #99a; padding: 0 6px; margin: 0 4px; color: #555; }
  table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
  td, th { padding: 2px 10px 2px 0; text-align: left; }
  th { color: #777; font-weight: normal; border-bottom: 1px solid #e2e4e8; }
  td.num { font-variant-numeric: tabular-nums; text-align: right; }
  .bar { display: inline-block; height: 9px; background: rgb(214, 39, 40); border-radius: 2px; }
  .bar.neg { background: rgb(31, 119, 180); }
  .caption { color: #666; font-size: 12px; margin-top: 6px; }
  dl.explained { display: grid; grid-template-columns: max-content auto; gap: 2px 8px; margin: 8px 0; }
  dl.explained dt { color: #777; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
  dl.explained dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; }
  .words .chip[data-views] { cursor: help; position: relative; }
  .words .chip .tiles { display: none; position: absolute; left: 0; top: 1.7em; z-index: 2; white-space: pre;
                        background: #fff; border: 1px solid #ccd; border-radius: 4px; padding: 4px 8px;
                        font-size: 12px; line-height: 1.5; color: #333; box-shadow: 0 2px 6px rgba(0, 0, 0, .12); }
  .words .chip:hover .tiles, .words .chip:focus .tiles { display: block; }
  .definition { color: #888; font-size: 12px; margin: 10px 0 0; }
  .hint { color: #999; font-size: 12px; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
{% if samples|length > 1 %}
<nav>{% for s in samples %}<a href="#{{ s.id }}">sample {{ s.index }}</a>{% endfor %}</nav>
{% endif %}
{% for s in samples %}
<section class="sample" id="{{ s.id }}">
  <h2>Sample {{ s.index }} <small>· {{ s.model }}</small></h2>
  <div class="originals">
    {% for image in s.images %}
    <figure><img src="{{ image.uri }}" alt="image {{ loop.index0 }}">
      <figcaption>image {{ loop.index0 }} · {{ image.size }}</figcaption></figure>
    {% endfor %}
  </div>
  <div class="row"><span class="label">Prompt</span><span class="prompt">{{ s.prompt }}</span></div>
  <dl class="explained">
    {% for label, text in s.explained %}<dt>{{ label }}</dt><dd class="{{ label }}">{{ text }}</dd>{% endfor %}
  </dl>
  <div class="row"><span class="label">{{ 'Target' if s.teacher_forced else 'Answer' }} tokens</span>
    {% for token in s.tokens %}
    <button class="tok{{ ' active' if loop.first }}" data-t="{{ loop.index0 }}">{{ token }}</button>
    {% endfor %}
    <span class="hint">hover to preview, click to pin</span>
  </div>
  <div class="row"><span class="label">Method</span>
    {% for method in s.methods %}
    <button class="method{{ ' active' if loop.first }}" data-m="{{ method }}">{{ method }}</button>
    {% endfor %}
  </div>
  {% for v in s.views %}
  <div class="view" data-m="{{ v.method }}" data-t="{{ v.target }}"{{ ' hidden' if not v.shown }}>
    <div class="overlays">
      {% for uri in v.overlays %}
      <img src="{{ uri }}" alt="{{ v.method }} heatmap, token {{ v.target }}, image {{ loop.index0 }}">
      {% endfor %}
    </div>
    {# no whitespace between words: spacing comes from the tokens themselves #}
    <div class="words">
      {%- for w in v.words -%}
      {%- if w.views and w.views > 1 -%}
      <span class="{{ w.kind }}" tabindex="0" data-views="{{ w.views }}">{{ w.text }}
        {#- the views list pops up on hover -#}<span class="tiles">{{ w.title }}</span></span>
      {%- else -%}
      <span class="{{ w.kind }}" style="{{ w.style }}" title="{{ w.title }}">{{ w.text }}</span>
      {%- endif -%}
      {%- endfor -%}
    </div>
    {% if v.table %}
    <table>
      <tr><th>word</th><th>pos</th><th>score</th><th></th></tr>
      {% for row in v.table %}
      <tr><td>{{ row.text }}</td><td class="num">{{ row.position }}</td><td class="num">{{ row.score }}</td>
          <td><span class="bar{{ ' neg' if row.negative }}" style="width: {{ row.width }}px"></span></td></tr>
      {% endfor %}
    </table>
    {% endif %}
    <div class="caption">{{ v.caption }}</div>
  </div>
  {% endfor %}
  <p class="definition">Image share: {{ image_share }}. Images, answer tokens and samples are numbered from 0.
    Heatmaps put zero at white: signed scores run blue (negative) to red (positive), non-negative ones white
    to red.</p>
</section>
{% endfor %}
</main>
<script>
// Every view is already in the page; this only chooses which one shows.
document.querySelectorAll("section.sample").forEach(function (section) {
  var first = section.querySelector("button.method");
  if (!first) return;  // nothing was explained
  var method = first.dataset.m, pinned = "0";
  function show(target) {
    section.querySelectorAll(".view").forEach(function (view) {
      view.hidden = !(view.dataset.m === method && view.dataset.t === target);
    });
    section.querySelectorAll("button.tok").forEach(function (b) {
      b.classList.toggle("active", b.dataset.t === target);
    });
    section.querySelectorAll("button.method").forEach(function (b) {
      b.classList.toggle("active", b.dataset.m === method);
    });
  }
  section.querySelectorAll("button.tok").forEach(function (b) {
    b.addEventListener("mouseenter", function () { show(b.dataset.t); });
    b.addEventListener("focus", function () { show(b.dataset.t); });
    b.addEventListener("mouseleave", function () { show(pinned); });
    b.addEventListener("click", function () { pinned = b.dataset.t; show(pinned); });
  });
  section.querySelectorAll("button.method").forEach(function (b) {
    b.addEventListener("click", function () { method = b.dataset.m; show(pinned); });
  });
});
</script>
</body>
</html>
""")
