"""The served OpenAPI description: it is the one in docs/, and the running agent keeps to it.

schemathesis generates requests from the description served by a running agent
(valid and invalid bodies, parameters, paths) and checks each answer: never a 5xx,
a status the description lists, its content type, and a body matching its schema.
The stream is left out: its answer never ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_api import CODES, Agent

DOCS = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    agent = Agent(tmp_path_factory.mktemp("api-schema"))
    agent.scan(*CODES[:5])
    agent.decisions(5)
    yield agent
    agent.stop()


def test_the_served_description_is_the_one_in_docs(running):
    status, served = running.get("/v1/openapi.json")
    assert status == 200 and served["openapi"] == "3.1.0"
    assert served == json.loads(DOCS.read_text()), "regenerate: python -m agent.sinks.api.openapi > docs/openapi.json"


def test_every_answer_keeps_to_the_description(running):
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{running.port}/v1/openapi.json")
    operations = [result.ok() for result in schema.exclude(path="/v1/decisions/stream").get_all_operations()]
    assert len(operations) >= 10
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def keeps_to_it(case):
            case.call_and_validate(checks=checks, timeout=20)

        keeps_to_it()
