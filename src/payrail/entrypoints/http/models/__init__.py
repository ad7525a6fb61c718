"""The OpenAPI contract: the envelope, the error answers and the helper every route documents with.

How to document a new route (the conformance test, tests/test_openapi_contract.py, fails and
names the route otherwise):

1. Put its request and response models in the models module of its router (api/models/<x>.py):
   the `data` of each success answer as a Pydantic model (``extra="allow"`` is fine while a
   field is young), and the request body as a flat `Body` model (no nested models: it is
   inlined; `StrictBody` when the route refuses unknown fields).
2. Decorate the route with ``**doc(...)``: ``ok={201: (Payout, "completed")}``, every error it
   really answers as ``errors={400: ("VALIDATION_ERROR", ...), 404: ("PAYOUT_NOT_FOUND",)}``,
   ``body=PayoutRequest`` (or ``body_required=False``), ``query=[query_param(...)]``,
   ``auth=False`` for routes without a key; ``other={503: (Model, "...")}`` for a non-2xx answer
   that is not an error code; ``headers=[header_param(...)]``. 401 (key) and 400/413/415
   (bodies) are added for you. A page that is not JSON (HTML, text) documents its media type:
   ``response_class=HTMLResponse, responses={200: {"content": {"text/html": {}}}}``.
3. Run ``.venv/bin/pytest tests/test_openapi_contract.py -q``.

The routes keep parsing bodies by hand (errors stay 400 `VALIDATION_ERROR` in the envelope, as
the API always answered); these models only describe what goes over the wire.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, create_model

SECURITY_SCHEME = "apikey"
# The codes every route with a body or a key may answer, whatever it documents itself.
# AUTH_THROTTLED: too many failed keys from one client or for one key prefix (auth.py).
AUTH_ERRORS: dict[int, tuple[str, ...]] = {401: ("UNAUTHORIZED",), 429: ("AUTH_THROTTLED",)}
# Every route that reads the database (all with a key) answers 503 while it is unreachable.
DATABASE_ERRORS: dict[int, tuple[str, ...]] = {503: ("DATABASE_UNAVAILABLE",)}
BODY_ERRORS: dict[int, tuple[str, ...]] = {
    400: ("VALIDATION_ERROR",),
    413: ("PAYLOAD_TOO_LARGE",),
    415: ("UNSUPPORTED_MEDIA_TYPE",),
}
ERROR_CODES_KEY = "x-error-codes"

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad input (see data.error)",
    401: "Missing or invalid `apikey` header",
    402: "Payment required",
    403: "The key may not act on this",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Body over the size limit",
    415: "Body is not application/json",
    422: "Idempotency key reused with another body",
    429: "Rate limited (see Retry-After)",
    502: "The payment provider refused or failed",
    503: "Not ready",
    504: "The payment provider timed out",
}


class Model(BaseModel):
    """Response data: the fields listed are always present; more may be added over time."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Body(BaseModel):
    """A request body (documented only: routes parse bodies by hand, errors stay 400).

    Unknown fields are ignored unless the route refuses them (then: `StrictBody`).
    """


class StrictBody(Body):
    """A body whose unknown fields are refused with 400 VALIDATION_ERROR."""

    model_config = ConfigDict(extra="forbid")


class ErrorData(Model):
    error: str = Field(description="Machine-readable code, e.g. VALIDATION_ERROR.")


class ErrorEnvelope(BaseModel):
    """Every failed answer: `success` false, a human message, and the code in `data.error`."""

    model_config = ConfigDict(extra="forbid")
    success: Literal[False]
    message: str
    data: ErrorData


class Empty(Model):
    pass


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    success: bool
    message: str


def envelope_model(data: type[BaseModel]) -> type[BaseModel]:
    """`{"success": true, "message", "data": <data>}` as a named schema (`<Data>Envelope`)."""
    name = f"{data.__name__}Envelope"
    if name not in _ENVELOPES:
        _ENVELOPES[name] = create_model(name, __base__=_Envelope, data=(data, ...))
    return _ENVELOPES[name]


_ENVELOPES: dict[str, type[BaseModel]] = {}


def query_param(
    name: str, description: str, schema: dict[str, Any] | None = None, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def limit_param(maximum: int, default: int) -> dict[str, Any]:
    """The `limit` of a list: an integer in 1..maximum (absent: the default)."""
    return query_param(
        "limit",
        f"1-{maximum}, default {default}",
        {"type": "integer", "minimum": 1, "maximum": maximum},
    )


def header_param(
    name: str, description: str, max_chars: int | None = None, *, required: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_chars is not None:
        schema["maxLength"] = max_chars
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": schema}  # fmt: skip


def error_response(status: int, codes: tuple[str, ...]) -> dict[str, Any]:
    examples = {
        code: {"value": {"success": False, "message": "…", "data": {"error": code}}}
        for code in codes
    }
    return {
        "model": ErrorEnvelope,
        "description": f"{STATUS_TEXT.get(status, 'Error')}: " + ", ".join(codes),
        ERROR_CODES_KEY: list(codes),
        "content": {"application/json": {"examples": examples}},
    }


def doc(
    *,
    ok: dict[int, tuple[type[BaseModel], str]],
    errors: dict[int, tuple[str, ...]] | None = None,
    body: type[BaseModel] | dict[str, Any] | None = None,
    body_required: bool = True,
    body_example: dict[str, Any] | None = None,
    query: list[dict[str, Any]] | None = None,
    headers: list[dict[str, Any]] | None = None,
    auth: bool = True,
    summary: str | None = None,
    other: dict[int, tuple[type[BaseModel], str]] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for a route decorator: its answers, body, parameters and security."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status, (data, description) in ok.items():
        responses[status] = {"model": envelope_model(data), "description": description}
    for status, (model, description) in (other or {}).items():
        responses[status] = {"model": model, "description": description}  # not an error code
    merged: dict[int, tuple[str, ...]] = {}
    platform = DATABASE_ERRORS if auth and 503 not in (other or {}) else {}
    for extra in (errors or {}, AUTH_ERRORS if auth else {}, BODY_ERRORS if body else {}, platform):
        for status, codes in extra.items():
            merged[status] = tuple(dict.fromkeys(merged.get(status, ()) + codes))
    for status, codes in sorted(merged.items()):
        responses[status] = error_response(status, codes)
    extra: dict[str, Any] = {}
    if auth:
        extra["security"] = [{SECURITY_SCHEME: []}]
    parameters = list(query or []) + list(headers or [])
    if parameters:
        extra["parameters"] = parameters
    if body is not None:
        # A model, or a schema built by hand (a `oneOf` of destinations: models/payouts.py).
        schema = body if isinstance(body, dict) else body.model_json_schema()
        media: dict[str, Any] = {"schema": schema}
        if body_example is not None:
            media["example"] = body_example
        extra["requestBody"] = {
            "required": body_required,
            "content": {"application/json": media},
        }
    first = min(ok)
    kwargs: dict[str, Any] = {"responses": responses, "status_code": first}
    if extra:
        kwargs["openapi_extra"] = extra
    if summary:
        kwargs["summary"] = summary
    return kwargs


# Schemas named in descriptions but not used by any route's body itself (a batch's items are
# checked one by one and refused in place, so the batch body does not constrain them).
EXTRA_SCHEMAS: dict[str, dict[str, Any]] = {}


def install_openapi(app: FastAPI) -> None:
    """The document at /api/v1/openapi.json: the `apikey` scheme, without FastAPI's 422.

    The routes parse their own input, so FastAPI's `HTTPValidationError` (422) is never sent:
    it is removed wherever a path parameter made FastAPI add it.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=API_DESCRIPTION,
            routes=app.routes,
        )
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                answer = operation.get("responses", {}).get("422")
                if answer and "HTTPValidationError" in str(answer):
                    del operation["responses"]["422"]
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(EXTRA_SCHEMAS)
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        components["securitySchemes"] = {
            SECURITY_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": "apikey",
                "description": "A project's API key (acts on its own project) or the admin key.",
            }
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


API_DESCRIPTION = (
    "Payouts in sats over Lightning and card orders through Stripe. Every answer is the "
    'envelope `{"success", "message", "data"}`; a failure has `success: false` and its '
    "machine code in `data.error` (the codes each answer may carry are listed per status, "
    "and in the `x-error-codes` extension). Authenticate with the `apikey` header."
)
