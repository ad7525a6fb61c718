"""The OpenAPI document is the contract: every route documents its answers, and answers match.

Two properties:
- every operation documents a success answer with a schema and every error it answers
  (a route added without `**doc(...)` fails here, by name: see
  payrail/entrypoints/http/models/__init__.py);
- schemathesis drives every route against the ASGI app (no network), on SQLite and PostgreSQL,
  and every answer conforms: documented status, body matching its schema, the error code in
  `data.error` listed for that status, and never a 5xx except the documented 502/503/504.
  This is also the property-based fuzz of every route (bad input never gets a 500).

Bounded: PAYRAIL_CONTRACT_EXAMPLES examples per operation (default 15), derandomized, or seeded
with PAYRAIL_CONTRACT_SEED (the seed is printed).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import ADMIN_KEY
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, Phase, given
from hypothesis import seed as seed_hypothesis
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as st_asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from payrail.config import Settings
from payrail.entrypoints.http.app import create_app
from payrail.entrypoints.http.models import ERROR_CODES_KEY

OPENAPI_PATH = "/api/v1/openapi.json"
EXAMPLES_PER_OPERATION = int(os.environ.get("PAYRAIL_CONTRACT_EXAMPLES", "15"))
SEED = os.environ.get("PAYRAIL_CONTRACT_SEED")
# Answers a route may give that come from the platform, not the route: a documented 5xx only.
SERVER_ERRORS_DOCUMENTED = {502, 503, 504}


def _document(settings: Settings) -> dict[str, Any]:
    return create_app(settings, migrate_db=False).openapi()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def undocumented_routes(doc: dict[str, Any]) -> list[str]:
    """Routes whose answers are not documented: no typed success answer, or a 4xx without codes."""
    found = []
    for name, operation in _operations(doc):
        responses = operation.get("responses", {})
        ok = {s: responses[s].get("content", {}) for s in responses if s.startswith("2")}
        # Each success answer names its media type; a JSON one has a schema (not `{}`).
        if not ok or not all(
            content and (content.get("application/json", {}).get("schema") or
                         "application/json" not in content)
            for content in ok.values()
        ):  # fmt: skip
            found.append(name)
        for status in (s for s in responses if s.startswith("4")):
            if not responses[status].get(ERROR_CODES_KEY):
                found.append(f"{name} {status} (no error codes)")
    return found


def test_every_route_documents_its_answers_and_errors(settings: Settings) -> None:
    undocumented = undocumented_routes(_document(settings))
    assert not undocumented, (
        "Routes without documented answers (decorate them with **doc(...), see "
        f"payrail/entrypoints/http/models/__init__.py): {undocumented}"
    )


def test_a_route_added_without_doc_is_named(settings: Settings) -> None:
    app = create_app(settings, migrate_db=False)

    @app.get("/api/v1/new-thing/{thing_id}")
    async def new_thing(thing_id: str) -> JSONResponse:
        return JSONResponse({})

    assert undocumented_routes(app.openapi()) == ["GET /api/v1/new-thing/{thing_id}"]


def test_document_has_the_apikey_scheme_and_no_fastapi_422(settings: Settings) -> None:
    doc = _document(settings)
    assert doc["components"]["securitySchemes"]["apikey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "apikey",
        "description": doc["components"]["securitySchemes"]["apikey"]["description"],
    }
    assert "HTTPValidationError" not in str(doc)
    create = doc["paths"]["/api/v1/payouts"]["post"]
    assert set(create["responses"]) >= {
        "200", "201", "202", "400", "401", "402", "403", "404",
        "413", "415", "422", "429", "502", "504",
    }  # fmt: skip
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["projectId"]  # amount, or quoteId (a quote's sats)
    assert {"amount", "quoteId", "playerId"} <= set(body["properties"])
    # exactly one destination: one variant per field the API accepts, each refusing the others
    assert [v["required"] for v in body["oneOf"]] == [
        ["gamertag"],
        ["lightningAddress"],
        ["invoice"],
    ]
    assert "BatchItem" in doc["components"]["schemas"]


async def test_docs_leads_to_the_ui(client) -> None:
    response = await client.get("http://test/docs", follow_redirects=True)
    assert response.status_code == 200
    assert "swagger-ui" in response.text.lower()


def error_code_is_documented(ctx: Any, response: Any, case: Any) -> None:
    """An error answer carries a `data.error` code its status documents (x-error-codes)."""
    status = str(response.status_code)
    if status[0] not in "45":
        return None
    documented = case.operation.definition.raw.get("responses", {}).get(status)
    code = response.json().get("data", {}).get("error")
    if documented is None:
        raise AssertionError(f"answered {status} {code}: the status is not documented")
    codes = documented.get(ERROR_CODES_KEY)
    if documented and codes is None:
        return None  # a documented non-error answer (503 of /ready): its schema is checked
    if code not in codes:
        raise AssertionError(f"answered {status} {code}; documented: {codes or 'none'}")
    return None


def no_undocumented_server_error(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code >= 500 and response.status_code not in SERVER_ERRORS_DOCUMENTED:
        raise AssertionError(f"answered {response.status_code}: {response.text[:300]}")
    return None


def _fuzz(operation: Any, mode: GenerationMode, seed: int) -> None:
    @hsettings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=SEED is None,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded in time
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        case.call_and_validate(
            headers={"apikey": ADMIN_KEY},
            additional_checks=[error_code_is_documented, no_undocumented_server_error],
            # 502/503/504 are documented answers. Some schema-valid bodies are refused on
            # purpose (an amount of 1.0, a callbackUrl that is not http(s)): a 400 is right.
            excluded_checks=[not_a_server_error, positive_data_acceptance],
        )

    if SEED is not None:
        check = seed_hypothesis(seed)(check)
    # Unsatisfiable: no input to make invalid (no parameters, no body), nothing to fuzz.
    with contextlib.suppress(Unsatisfiable):
        check()


def test_every_answer_conforms_to_the_document(settings: Settings, monkeypatch) -> None:
    seed = int(SEED) if SEED is not None else 0
    # No network: a generated Lightning Address's domain is never looked up (the answer is the
    # documented 502 RECIPIENT_UNREACHABLE, as for a domain that does not resolve).
    from payrail.services import callback_urls

    async def no_dns(host: str, port: int) -> list[Any]:
        raise OSError(f"{host}: no DNS in the contract test")

    monkeypatch.setattr(callback_urls, "resolve_host", no_dns)
    print(
        f"contract fuzz: {EXAMPLES_PER_OPERATION} examples per operation and mode, "
        + (f"seed {seed}" if SEED is not None else "derandomized (set PAYRAIL_CONTRACT_SEED)")
    )
    app = create_app(settings, migrate_db=True)
    try:
        schema = schemathesis.openapi.from_asgi(OPENAPI_PATH, app)
        # Unknown query parameters are ignored, as HTTP APIs do: not a schema violation here.
        schema.config.generation.update(allow_extra_parameters=False)
        failures = []
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    _fuzz(operation, mode, seed)
                except (Exception, BaseExceptionGroup) as exc:  # one report of every failure
                    failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:800]}")
    finally:
        st_asgi.shutdown_lifespans()  # closes this app's runtime before its database goes
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("path", ["/payouts", "/orders", "/callbacks"])
async def test_an_empty_limit_is_refused_as_the_document_says(client, path) -> None:
    response = await client.get(f"{path}?limit=")
    assert response.status_code == 400
    assert response.json()["data"] == {"error": "VALIDATION_ERROR", "field": "limit"}
    assert (await client.get(path)).status_code == 200  # absent: the default
