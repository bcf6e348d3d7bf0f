"""The HTML pages, one registry: the navigation bar is built from :data:`PAGES`.

A new page (the dictionary and audit pages to come) is one :class:`Page` in
:data:`PAGES` (or :func:`register_page`), one template under ``templates/``
and, usually, one script under ``static/``. Every page takes its data from the
JSON API; the templates extend the HTML report's own head and style
(:data:`mmlens.report.page.PAGE_HEAD`).

Example:
    >>> [page.path for page in PAGES]
    ['/ask', '/inside', '/circuit', '/neurons', '/model']
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mmlens.report.page import PAGE_HEAD


@dataclass(frozen=True)
class Page:
    """One page: its address, its title in the navigation, its template and script (under ``static/``)."""

    path: str
    title: str
    template: str
    script: str | None = None


PAGES: list[Page] = [
    Page("/ask", "Ask and explain", "ask.html", "ask.js"),
    Page("/inside", "Look inside", "inside.html", "inside.js"),
    Page("/circuit", "Circuit", "circuit.html", "circuit.js"),
    Page("/neurons", "Neurons", "neurons.html", "neurons.js"),
    Page("/model", "Model", "model.html", "model.js"),
]


def register_page(page: Page) -> None:
    """Add ``page`` to the navigation (call before :func:`~mmlens.web.app.create_app`).

    Example:
        >>> register_page(PAGES[0])  # already there: nothing changes
        >>> len(PAGES)
        5
    """
    if page.path not in {p.path for p in PAGES}:
        PAGES.append(page)


#: The app's icon: a blue tile (SVG), inline in every page and at /favicon.ico, so no page asks for a missing file.
ICON_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
            'fill="#1f5fbf"/><rect x="4" y="4" width="8" height="8" fill="#fff"/></svg>')
_ICON_URI = "data:image/svg+xml," + quote(ICON_SVG)

# The report's head (doctype, title, base style, an open <style>) closes here and gains the app's own style.
_BASE = PAGE_HEAD + """\
</style>
<link rel="icon" href="{{ icon }}">
<link rel="stylesheet" href="/static/app.css">
</head>
<body>
<nav class="pages">
  <strong>mmlens</strong> <span class="model">{{ model }}</span>
  {% for page in pages %}<a href="{{ page.path }}"{{ ' class="here"'|safe if page.path == here }}>{{ page.title }}</a>{% endfor %}
</nav>
<main>
<h1>{{ title }}</h1>
<div id="error" class="error" hidden></div>
{% block content %}{% endblock %}
</main>
<script src="/static/common.js"></script>
{% if script %}<script src="/static/{{ script }}"></script>{% endif %}
</body>
</html>
"""

_TEMPLATES = jinja2.Environment(
    loader=jinja2.ChoiceLoader([jinja2.DictLoader({"base.html": _BASE}),
                                jinja2.PackageLoader("mmlens.web", "templates")]),
    autoescape=True, trim_blocks=True, lstrip_blocks=True)


def render(page: Page, model: str) -> str:
    """The HTML of ``page`` for a server running ``model``.

    Example:
        >>> "Look inside" in render(PAGES[0], "shapes-llava")
        True
    """
    return _TEMPLATES.get_template(page.template).render(
        title=page.title, here=page.path, pages=PAGES, model=model, script=page.script, icon=_ICON_URI)


def page_router() -> APIRouter:
    """Routes for every page in :data:`PAGES` (read when the app is built), and ``/`` to the first."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse(PAGES[0].path)

    @router.get("/favicon.ico")
    def icon() -> Response:  # browsers ask for it whatever the page links
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    for page in list(PAGES):
        router.add_api_route(page.path, _shower(page), methods=["GET"], response_class=HTMLResponse)
    return router


def _shower(page: Page):  # one closure per page: FastAPI would read a default argument as a query parameter
    def show(request: Request) -> HTMLResponse:
        return HTMLResponse(render(page, request.app.state.server.model.name))

    return show
