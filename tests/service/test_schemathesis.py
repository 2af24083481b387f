"""Schemathesis against the service's own OpenAPI document: requests generated from the
schema for every endpoint, with and without a valid key — no answer is a 5xx.

(Driven through Hypothesis directly: schemathesis's pytest plugin does not run under
this pytest.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from router.service.app import Settings, create_app
from router.service.keys import KeyRing, new_key

ROOT = Path(__file__).resolve().parents[2]
KEY, ENTRY = new_key("fuzz", ["decide", "read", "admin"])


@pytest.mark.parametrize("auth", [True, False], ids=["key", "no key"])
def test_no_generated_request_makes_a_server_error(redis_url, auth):
    app = create_app(Settings(str(ROOT / "configs" / "strategy.toml"), redis_url,
                              deadline_ms=2000), KeyRing([ENTRY]))  # fmt: skip
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    headers = {"authorization": f"Bearer {KEY}"} if auth else {}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/decisions", "/v1/decisions/batch"}
    seen: list[tuple[str, str, int]] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=25 if auth else 8, deadline=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case):
            response = case.call(headers=headers)
            seen.append((case.method, case.path, response.status_code))
            assert response.status_code < 500, (case.method, case.path, response.text[:500])

        check()
    assert seen and all(code < 500 for _, _, code in seen)
    # The document describes the bodies (what the generated requests were drawn from).
    body = schema.raw_schema["paths"]["/v1/decisions"]["post"]["requestBody"]
    assert "application/json" in body["content"]
