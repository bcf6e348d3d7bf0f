"""Schemathesis against the OpenAPI schema: whatever it sends, no 500 and only documented answers.

Every default check runs (server errors, status codes, content types, response
headers and schemas, rejection of invalid data) except that schema-valid data
must be accepted: an uploaded "image" of random bytes is schema-valid and
rightly refused with 422.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.checks import positive_data_acceptance

import mmlens
from mmlens.web import Settings, create_app
from tests.web.test_api import ENDPOINTS


@pytest.fixture(scope="module")
def api_schema():
    # A model of its own: the background jobs fuzzing starts may outlive the test, and would hold the shared one.
    app = create_app(mmlens.load("shapes-llava"), Settings(max_upload_bytes=100_000, max_pixels=100_000, max_waiting=2))
    return schemathesis.openapi.from_asgi("/api/openapi.json", app)


@pytest.mark.parametrize("method, path", sorted(ENDPOINTS))
def test_api_never_fails_with_a_server_error(api_schema, method, path):
    operation = api_schema[path][method.upper()]

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def fuzz(case) -> None:
        # Schema-valid is not always usable: random bytes fit the image field but are no image (422, by design).
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    fuzz()
