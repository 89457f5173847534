"""schemathesis against auth and collect on a running stack: no 5xx, every answer as documented, every error
in the ``{"error": {"code", "message"}}`` shape with the code shared/wire/errors.py gives its status."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from shared.infra.config import DEV_ADMIN_KEY, DEV_API_KEY
from shared.wire.errors import ServiceError
from tests.conftest import RunningStack, report_fuzz
from tests.waits import scaled

EXAMPLES = 60  # per operation and generation mode: about 20 s for both services on this 2-core machine
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CODES = {kind.status: kind.code for kind in ServiceError.__subclasses__()}


class AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    __hash__ = str.__hash__


ANY_TEXT = AnyText()


def assert_error_shape(case: Case, response: requests.Response) -> None:
    """A 4xx/5xx (but /healthz's report) is exactly ``{"error": {"code", "message"}}`` with its status's code."""
    if response.status_code < 400 or case.path == "/healthz":
        return
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == CODES[response.status_code] and isinstance(body["error"]["message"], str), body


def fuzz(base_url: str, authorization: str, statuses: Counter[str]) -> None:
    """Every operation of the service's own /openapi.json, with schema-valid and schema-breaking inputs, counting
    the answers by status in ``statuses``. Raises on the first failed check (after shrinking it)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {authorization}"}
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            has_inputs = operation.body or any(True for _ in operation.iter_parameters())
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,):

                @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
                          suppress_health_check=list(HealthCheck))
                @given(operation.as_strategy(generation_mode=mode))
                def call(case: Case) -> None:
                    response = case.call(base_url=base_url, session=session, headers=headers, timeout=scaled(10))
                    statuses[str(response.status_code)] += 1
                    case.validate_response(response, checks=CHECKS, headers=headers)
                    assert_error_shape(case, response)

                try:
                    call()
                except Unsatisfiable:  # a free string path parameter (/static/{path}) has no schema-breaking value
                    if mode is GenerationMode.POSITIVE:
                        raise


async def fuzz_service(name: str, base_url: str, authorization: str) -> Counter[str]:
    statuses: Counter[str] = Counter()
    try:
        await asyncio.to_thread(fuzz, base_url, authorization, statuses)
    finally:
        report_fuzz(f"schemathesis: {name}", statuses, sum(n for s, n in statuses.items() if int(s) >= 500))
    return statuses


async def test_auth_api_answers_fuzzed_requests_as_documented(shared_stack: RunningStack) -> None:
    """Fuzzed requests to every auth operation get documented answers, never a 5xx."""
    statuses = await fuzz_service("auth", shared_stack.stack.auth_url, DEV_ADMIN_KEY)
    assert statuses["200"] and statuses["422"]


async def test_collect_api_answers_fuzzed_requests_as_documented(shared_stack: RunningStack) -> None:
    """Fuzzed requests to every collect operation get documented answers, never a 5xx, and it keeps serving."""
    statuses = await fuzz_service("collect", shared_stack.stack.collect_url, DEV_API_KEY)
    assert statuses["202"] and statuses["422"]
    assert set((await shared_stack.client.health()).values()) == {200}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/messages/xyz", 404), ("GET", "/v1/messages/%F1%98%93%BC", 404), ("GET", "/v1/messages/a%2Fb", 404),
    ("GET", "/nowhere", 404), ("GET", "/static/..%2Fapp.py", 404), ("DELETE", "/v1/messages", 405),
])
async def test_refusals_outside_the_handlers_use_the_error_shape(shared_stack: RunningStack, method: str, path: str,
                                                                 status: int) -> None:
    """A message id that is not one (once a 500), an unknown path or file, a wrong method: the documented error shape."""
    headers = {"Authorization": f"Bearer {DEV_API_KEY}"}
    async with shared_stack.client.session.request(method, f"{shared_stack.stack.collect_url}{path}", headers=headers) as r:
        assert (r.status, await r.json()) == (status, {"error": {"code": CODES[status], "message": ANY_TEXT}})
