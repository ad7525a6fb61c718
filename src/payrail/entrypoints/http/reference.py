"""docs/api.md's route reference and error-code table, generated from the OpenAPI document (one
source of truth; tests/test_docs_examples.py fails when the page and the document differ).

.venv/bin/python -m payrail.entrypoints.http.reference --write     # rewrites the generated part
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from payrail.entrypoints.http.models import ERROR_CODES_KEY

BEGIN = "<!-- BEGIN GENERATED: python -m payrail.entrypoints.http.reference --write -->"
END = "<!-- END GENERATED -->"
DOC = Path("docs/api.md")


def _schema_fields(schema: dict[str, Any]) -> str:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    parts = [f"`{name}`" + ("" if name in required else "?") for name in props]
    return ", ".join(parts)


def _type(schema: dict[str, Any]) -> str:
    return schema.get("$ref", "").rsplit("/", 1)[-1].removesuffix("Envelope")


def render(doc: dict[str, Any]) -> str:
    lines = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            lines.append(f"### `{method.upper()} {path}`\n")
            if op.get("summary"):
                lines.append(op["summary"] + ".\n")
            auth = "`apikey` header" if op.get("security") else "none"
            lines.append(f"- auth: {auth}")
            params = [
                f"`{p['name']}` ({p['in']})"
                for p in op.get("parameters", [])
                if p["in"] in ("query", "header")
            ]
            if params:
                lines.append("- parameters: " + ", ".join(params))
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                lines.append("- body (JSON): " + _schema_fields(body["schema"]))
            for status, answer in op.get("responses", {}).items():
                codes = answer.get(ERROR_CODES_KEY)
                if codes:
                    lines.append(f"- {status}: " + ", ".join(f"`{c}`" for c in codes))
                    continue
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                model = _type(schema)
                lines.append(
                    f"- {status}: {answer.get('description', '')}"
                    + (f" — `{model}`" if model else "")
                )
            lines.append("")
    return "\n".join(lines)


ERRORS_BEGIN = "<!-- BEGIN GENERATED ERRORS: python -m payrail.entrypoints.http.reference -->"
ERRORS_END = "<!-- END GENERATED ERRORS -->"

# Codes any route may answer, whatever it documents: the platform's, not a route's.
GLOBAL_CODES: dict[str, tuple[int, str]] = {
    "NOT_FOUND": (404, "no such route (any path)"),
    "METHOD_NOT_ALLOWED": (405, "the path exists, not with this method"),
    "INTERNAL_ERROR": (500, "a bug, never bad input; retry with the same idempotency key"),
}
# What a code's answer carries in `data` besides `error` (docs only; the codes come from the
# OpenAPI document, so a code a route documents is listed here whether or not it has a note).
EXTRA_FIELDS: dict[str, str] = {
    "VALIDATION_ERROR": "`field`, `fields` or `missingFields` where known",
    "INVALID_AMOUNT": "`minAmount`, `maxAmount`",
    "DESCRIPTION_TOO_LONG": "`maxLength`",
    "INVALID_STATUS": "`validStatuses`",
    "INVALID_CURRENCY": "`supportedCurrencies`",
    "INVALID_SIGNATURE": "(the Stripe webhook)",
    "INSUFFICIENT_BALANCE": "`requiredAmount`, `fee`, `totalCost`, `currentBalance`",
    "CARD_DECLINED": "the order",
    "UNSUPPORTED_MEDIA_TYPE": "`contentType`",
    "PAYLOAD_TOO_LARGE": "`maxBytes`",
    "RATE_LIMIT_EXCEEDED": "`retryAfter` (and a `Retry-After` header)",
    "RECIPIENT_TEMPORARILY_BLOCKED": "`retryAfter`, `failuresMax`",
    "PAYMENT_FAILED": "the payout, `balanceRolledBack`, `chargedAmount`",
    "GATEWAY_TIMEOUT": "the payout, `balanceRolledBack`, `chargedAmount`",
    "PROVIDER_ERROR": "the order",
    "PROVIDER_TIMEOUT": "the order",
    "DATABASE_UNAVAILABLE": "`retryAfter`: retry with the same idempotency key",
    "INTERNAL_ERROR": "",
}


def documented_codes(doc: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    """code → {status: {operations}} over every route's documented answers."""
    found: dict[str, dict[str, set[str]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, answer in op.get("responses", {}).items():
                for code in answer.get(ERROR_CODES_KEY, []):
                    found.setdefault(code, {}).setdefault(status, set()).add(
                        f"{method.upper()} {path}"
                    )
    return found


def render_errors(doc: dict[str, Any]) -> str:
    """The summary line and the table of every error code the API answers."""
    operations = sum(len(item) for item in doc["paths"].values())
    lines = [
        f"The document has **{len(doc['paths'])} paths** ({operations} operations). Every error "
        "code any of them answers, with its status, what else `data` carries, and how many "
        'routes may answer it (each route\'s own list is under "Routes" below):',
        "",
        "| code | status | extra fields in `data` | routes |",
        "|---|---|---|---|",
    ]
    found = documented_codes(doc)
    for code, (status, note) in GLOBAL_CODES.items():
        found.setdefault(code, {}).setdefault(str(status), set())
        EXTRA_FIELDS.setdefault(code, note)
    for code in sorted(found, key=lambda c: (min(found[c]), c)):
        statuses = ", ".join(sorted(found[code]))
        routes = len(set().union(*found[code].values()))
        where = "any" if code in GLOBAL_CODES else str(routes)
        note = EXTRA_FIELDS.get(code, "") or GLOBAL_CODES.get(code, (0, ""))[1]
        lines.append(f"| `{code}` | {statuses} | {note} | {where} |")
    return "\n".join(lines) + "\n"


def _replace(text: str, begin: str, end: str, generated: str) -> str:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n\n{generated}\n{end}{tail}"


def generated_doc(text: str, doc: dict[str, Any]) -> str:
    """docs/api.md with both generated parts rewritten from the OpenAPI document."""
    text = _replace(text, ERRORS_BEGIN, ERRORS_END, render_errors(doc))
    return _replace(text, BEGIN, END, render(doc))


def main() -> None:
    from payrail.config import Settings
    from payrail.entrypoints.http.app import create_app

    doc = create_app(Settings(database_url="sqlite:///:memory:"), migrate_db=False).openapi()
    generated = render(doc)
    if "--write" not in sys.argv:
        print(generated)
        return
    DOC.write_text(generated_doc(DOC.read_text(), doc))


if __name__ == "__main__":
    main()
