"""Property-based tests of the whole API from its OpenAPI document (schemathesis): whatever a client sends, valid or
not, the service never answers 5xx, and its answers match the document (status codes, content types, bodies).

Schemathesis generates valid and invalid requests (both modes are on by default). ``negative_data_rejection`` is left
out on purpose: pydantic's lax mode accepts some values the JSON schema calls the wrong type (a unix timestamp for a
date-time, "0.5" for a number), which is a leniency, not a fault.
"""

from __future__ import annotations

import schemathesis
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aegis_online.serve.app import create_app

from .helpers import ADMIN_KEY, bearer, make_service

APP = create_app(make_service())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
# No health check is suppressed: none fires on these schemas (checked with several seeds, on a loaded 2-core
# machine); suppress one only when it fires, with the reason it is harmless here.
@settings(max_examples=100, deadline=None)
def test_the_api_never_answers_5xx_and_matches_its_document(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=bearer(ADMIN_KEY), checks=CHECKS)
