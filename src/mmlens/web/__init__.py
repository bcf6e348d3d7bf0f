"""The web app of ``mmlens serve``: pages to ask, explain and look inside, over a JSON API.

Needs the ``web`` extra (``pip install 'mmlens[web]'``: fastapi, uvicorn,
python-multipart, and uvicorn's C parser and loop, httptools and uvloop).

Example:
    >>> from fastapi.testclient import TestClient
    >>> client = TestClient(create_app("tiny-llava"))
    >>> client.get("/api/examples").json()[0]["name"]
    'colour_question'
"""

from mmlens.web.app import create_app
from mmlens.web.pages import PAGES, Page, register_page
from mmlens.web.settings import Settings

__all__ = ["PAGES", "Page", "Settings", "create_app", "register_page"]
