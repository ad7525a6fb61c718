"""docs/api.md's route reference, generated from the OpenAPI document (one source of truth).

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


def main() -> None:
    from payrail.config import Settings
    from payrail.entrypoints.http.app import create_app

    doc = create_app(Settings(database_url="sqlite:///:memory:"), migrate_db=False).openapi()
    generated = render(doc)
    if "--write" not in sys.argv:
        print(generated)
        return
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n\n{generated}\n{END}{tail}")


if __name__ == "__main__":
    main()
