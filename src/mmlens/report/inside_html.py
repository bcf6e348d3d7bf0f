"""Self-contained HTML sections for the model perspective (``mmlens lens``, ``mmlens trace``).

A section is a titled block of figures (embedded as PNG data URIs), short
facts and small tables; :func:`section_html` returns it as a fragment to merge
into a larger report, :func:`write_sections` writes a page around sections.

Example:
    >>> html = section_html("logit lens", facts={"answer": "red"}, figures=[])
    >>> html.startswith('<section class="inside">')
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jinja2
from matplotlib.figure import Figure

from mmlens.report.figures import png_data_uri
from mmlens.report.page import PAGE_HEAD


def section_html(
    title: str,
    facts: dict[str, Any] | None = None,
    figures: Sequence[tuple[str, Figure | str]] = (),
    tables: Sequence[dict[str, Any]] = (),
    note: str = "",
) -> str:
    """One ``<section>``: facts as a definition list, ``(caption, figure or data URI)`` pairs, tables.

    A table is ``{"title": str, "columns": [...], "rows": [[...], ...]}``.

    Example:
        >>> "<table>" in section_html("t", tables=[{"title": "x", "columns": ["a"], "rows": [[1]]}])
        True
    """
    shown = [(caption, figure if isinstance(figure, str) else png_data_uri(figure)) for caption, figure in figures]
    return _SECTION.render(title=title, facts=facts or {}, figures=shown, tables=tables, note=note)


def write_sections(sections: Sequence[str], path: str | Path, title: str = "mmlens") -> Path:
    """Write a self-contained page holding ``sections`` (from :func:`section_html`); returns its path.

    Example:
        >>> write_sections([section_html("t")], "/tmp/inside.html").suffix
        '.html'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_PAGE.render(title=title, sections=sections), encoding="utf-8")
    return path


_ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)

_SECTION = _ENV.from_string("""\
<section class="inside">
  <h2>{{ title }}</h2>
  {% if facts %}
  <dl>
    {% for key, value in facts.items() %}<dt>{{ key }}</dt><dd>{{ value }}</dd>{% endfor %}
  </dl>
  {% endif %}
  {% if note %}<p class="note">{{ note }}</p>{% endif %}
  {% for caption, uri in figures %}
  <figure><img src="{{ uri }}" alt="{{ caption }}"><figcaption>{{ caption }}</figcaption></figure>
  {% endfor %}
  {% for table in tables %}
  <h3>{{ table.title }}</h3>
  <table>
    <tr>{% for column in table.columns %}<th>{{ column }}</th>{% endfor %}</tr>
    {% for row in table.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}
  </table>
  {% endfor %}
</section>
""")

_PAGE = _ENV.from_string(PAGE_HEAD + """\
  section.inside { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 18px 22px;
                   margin-bottom: 24px; }
  h2 { font-size: 16px; margin: 0 0 10px; }
  h3 { font-size: 14px; margin: 14px 0 6px; }
  dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; margin: 0 0 10px; }
  dt { color: #777; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
  dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; }
  figure { margin: 10px 0; }
  figure img { max-width: 100%; border: 1px solid #eee; border-radius: 4px; }
  figcaption { color: #666; font-size: 13px; }
  table { border-collapse: collapse; font-size: 13px; }
  th, td { border-bottom: 1px solid #eee; padding: 3px 10px; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  .note { color: #555; font-size: 13px; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
{% for section in sections %}{{ section | safe }}{% endfor %}
</main>
</body>
</html>
""")
