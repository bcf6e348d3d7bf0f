"""The views of a dataset's explanations: ``samples.parquet`` (one row per sample and method) and ``index.html``.

Both are rebuilt from the manifest after each finished shard and replaced in
one step, so they always list exactly the finished samples.

Example:
    >>> import tempfile
    >>> path = write_index({"model": {"name": "m"}, "methods": ["attention"], "reports": True, "shards": []},
    ...                    Path(tempfile.mkdtemp()) / "index.html")
    >>> "0 samples" in path.read_text()
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jinja2

from mmlens.report.page import PAGE_HEAD

#: Columns of ``samples.parquet`` and their Arrow types.
COLUMNS = {"shard": "string", "sample": "int64", "sample_id": "string", "prompt": "string", "answer": "string",
           "expected": "string", "correct": "bool", "method": "string", "image_share": "float64",
           "top_row": "int32", "top_col": "int32", "top_words": "string", "folder": "string"}


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` (see :data:`COLUMNS`) as Parquet at ``path``, atomically.

    Example:
        >>> import tempfile
        >>> write_table([], Path(tempfile.mkdtemp()) / "t.parquet").name
        't.parquet'
    """
    from mmlens.store.shard import _arrow

    pa = _arrow()
    table = pa.table({name: pa.array([row.get(name) for row in rows], type=getattr(pa, _ARROW[kind])())
                      for name, kind in COLUMNS.items()})
    tmp = path.with_name(path.name + ".tmp")
    pa.parquet.write_table(table, str(tmp))
    os.replace(tmp, path)
    return path


_ARROW = {"string": "string", "int64": "int64", "int32": "int32", "bool": "bool_", "float64": "float64"}


def write_index(manifest: dict[str, Any], path: Path) -> Path:
    """Write the index page: one line per finished sample, linking its report, with each method's image share."""
    samples = [{**sample, "href": f"{sample['folder']}/{'report.html' if manifest['reports'] else 'explanation.json'}"}
               for record in manifest["shards"] for sample in record["samples"]]
    errors = [{**error, "shard": record["id"]} for record in manifest["shards"] for error in record["errors"]]
    correct = [s["correct"] for s in samples if s["correct"] is not None]
    html = _TEMPLATE.render(title=f"mmlens · {manifest['model']['name']} · {len(samples)} samples",
                            model=manifest["model"]["name"], methods=manifest["methods"], samples=samples,
                            errors=errors, correct=sum(correct), graded=len(correct))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


_ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["share"] = _share
_TEMPLATE = _ENV.from_string(PAGE_HEAD + """\
  table { border-collapse: collapse; background: #fff; width: 100%; font-size: 14px; }
  th, td { border-bottom: 1px solid #e2e4e8; padding: 4px 8px; text-align: left; vertical-align: top; }
  th { background: #f0f1f4; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .prompt { font-family: ui-monospace, Menlo, Consolas, monospace; }
  .wrong { color: #b3261e; }
  a { color: #1f5fbf; }
</style>
</head>
<body>
<main>
<h1>{{ model }}: {{ samples|length }} samples explained</h1>
<p>Methods: {{ methods|join(", ") }}.{% if graded %} Answers equal to the dataset's: {{ correct }} of {{ graded }}.{% endif %}
  The share columns give the image share of the first answer token.</p>
<table>
<thead><tr><th>row</th><th>sample</th><th>prompt</th><th>answer</th><th>expected</th>
{% for method in methods %}<th>{{ method }}</th>{% endfor %}</tr></thead>
<tbody>
{% for s in samples %}
<tr id="row-{{ s.sample }}"><td class="num">{{ s.sample }}</td><td><a href="{{ s.href }}">{{ s.sample_id }}</a></td>
<td class="prompt">{{ s.prompt }}</td><td{% if s.correct == false %} class="wrong"{% endif %}>{{ s.answer }}</td>
<td>{{ s.expected if s.expected is not none else "" }}</td>
{% for method in methods %}<td class="num">{{ s.methods[method].image_share|share }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% if errors %}
<h2>{{ errors|length }} bad rows skipped</h2>
<ul>{% for e in errors %}<li>row {{ e.row }} ({{ e.id }}): {{ e.reason }}</li>{% endfor %}</ul>
{% endif %}
</main>
</body>
</html>
""")
