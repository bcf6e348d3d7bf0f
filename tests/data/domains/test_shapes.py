"""The shapes domain is the shapes world itself."""

from __future__ import annotations

from mmlens.data.domains import make_sample
from mmlens.data.domains import shapes as shapes_domain
from mmlens.data.shapes import make_sample as shapes_sample


def test_shapes_domain_is_the_shapes_world() -> None:
    for i in range(10):
        a, b = make_sample("shapes", "test", i), shapes_sample("test", i)
        assert (a.id, a.prompt, a.answer, a.image.tobytes()) == (b.id, b.prompt, b.answer, b.image.tobytes())
    assert len(shapes_domain.PATCH_CLASSES) == 20
