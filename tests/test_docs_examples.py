"""Docs that cannot drift (issue 25).

- Every ```sh and ```python example of README.md and docs/*.md runs against a real
  `payrail serve` (sandbox, its own SQLite file, a port in 12500-12599), each from the seeded
  state (DELETE /test/reset with the admin key first: a project key's reset keeps payouts and
  never lowers a balance, so one example's deposit would show in the next), as written: bash
  with `set -euo pipefail` (a variable never set, a failing command, a curl that cannot
  connect: the example fails), with
  127.0.0.1:3000 pointed at the test's server. What the page says an example prints is
  checked: each `<!-- docs-test output: TEXT -->` line right after it must appear in its
  output. An example that cannot run here says why, right above it:
  `<!-- not run by the docs test: REASON -->`.
- Every curl that sends a body to the API sends it as JSON (else the API answers 415).
- Shell examples are fenced ```sh (a ```bash block would escape this test); every docs/*.md
  page is linked from README.md, which stays a front door (at most README_LINES_MAX lines).
- docs/api.md's generated parts (the path count, the error-code table, the routes) are what
  the OpenAPI document says, and every error code payrail can answer is in that document.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from live_sandbox import Sandbox, sandbox_server

from payrail.config import Settings
from payrail.domain import errors as domain_errors
from payrail.entrypoints.http import reference
from payrail.entrypoints.http.app import create_app

ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGES = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS_PAGES]
PORT = 12_530  # issue 25's range, 12500-12599
DOCS_HOST = "127.0.0.1:3000"
FENCE_RE = re.compile(r"^```(sh|python)\n(.*?)^```\n", re.S | re.M)
SKIP_RE = re.compile(r"<!-- not run by the docs test: (.+?) -->\s*\n$")
OUTPUT_RE = re.compile(r"\A(?:<!-- docs-test output: (.+?) -->\n)")
EXAMPLE_TIMEOUT_S = 120
REASON_MIN_CHARS = 10
ADMIN_KEY = {"apikey": "sandbox_admin_key_change_me"}
README_LINES_MAX = 275


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    language: str
    code: str
    skip_reason: str | None
    outputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE_RE.finditer(text):
            before = text[: match.start()]
            skip = SKIP_RE.search(before[-600:])
            outputs = []
            rest = text[match.end() :]
            while (out := OUTPUT_RE.match(rest)) is not None:
                outputs.append(out.group(1))
                rest = rest[out.end() :]
            found.append(
                Example(
                    page=page,
                    line=before.count("\n") + 1,
                    language=match.group(1),
                    code=match.group(2),
                    skip_reason=skip.group(1).strip() if skip else None,
                    outputs=tuple(outputs),
                )
            )
    return found


EXAMPLES = examples()
RUNNABLE = [e for e in EXAMPLES if e.skip_reason is None]


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_LINES_MAX
    first_block = FENCE_RE.search(readme)
    assert first_block is not None and "make run" in first_block.group(2)
    assert "make test" in first_block.group(2)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]*)?\)", readme))
    pages = {str(page.relative_to(ROOT)) for page in DOCS_PAGES}
    missing = sorted(pages - linked)
    assert not missing, f"link these from README.md ('Where to read on'): {missing}"


def test_shell_examples_are_fenced_sh() -> None:
    """A ```bash (or shell, console, zsh) block would escape this test: shell is ```sh."""
    other = re.compile(r"^\s*```(bash|shell|console|zsh|shell-session)\b", re.M)
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in other.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{page.relative_to(ROOT)}:{line}")
    assert not found, f"fence these ```sh (and make them run, or say why not): {found}"


def test_every_example_runs_or_says_why_not() -> None:
    assert len(RUNNABLE) >= 15, [e.name for e in RUNNABLE]
    for example in EXAMPLES:
        if example.skip_reason is not None:
            assert len(example.skip_reason) >= REASON_MIN_CHARS, example.name
            assert not example.outputs, f"{example.name}: an output check on a skipped example"


def _curl_commands(code: str) -> list[str]:
    joined = code.replace("\\\n", " ")
    return [line for line in joined.splitlines() if re.search(r"\bcurl\b", line)]


def test_every_curl_to_the_api_sends_json() -> None:
    missing = []
    for example in EXAMPLES:
        if example.language != "sh":
            continue
        # a header kept in a variable of the block: J='content-type: application/json'
        json_vars = re.findall(
            r"\b(\w+)=[\"']content-type: application/json[\"']", example.code, re.I
        )
        for command in _curl_commands(example.code):
            sends_body = re.search(r"\s(-d|--data|--data-binary)\s", command)
            to_api = re.search(r"/api/v1|\$B\b|\$P\b|\$BASE\b", command)
            json_header = "content-type: application/json" in command.lower() or any(
                f"${name}" in command or f"${{{name}}}" in command for name in json_vars
            )
            if sends_body and to_api and not json_header:
                missing.append(f"{example.name}: {command.strip()[:120]}")
    assert not missing, "curl sends a body without 'content-type: application/json':\n" + (
        "\n".join(missing)
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    with sandbox_server(tmp_path_factory.mktemp("docs-server"), PORT) as server:
        yield server


def _workdir(tmp_path: Path) -> Path:
    """Where an example runs: `.venv/bin/payrail` works as in a checkout, `var/` is its own."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "var").mkdir()
    return tmp_path


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.name for e in RUNNABLE])
def test_example_runs_as_written(example: Example, sandbox: Sandbox, tmp_path: Path) -> None:
    reset = httpx.delete(f"{sandbox.api}/test/reset", headers=ADMIN_KEY, timeout=30)
    assert reset.status_code == 200, reset.text
    here = f"127.0.0.1:{sandbox.port}"
    code = example.code.replace(DOCS_HOST, here)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYRAIL_")}
    env |= {
        "PAYRAIL_DATABASE_URL": sandbox.database_url,
        "PAYRAIL_PORT": str(sandbox.port),  # the CLI reaches the server's Stripe simulator
        "PAYRAIL_MODE": "sandbox",
    }
    if example.language == "sh":
        command = ["bash", "-c", "set -euo pipefail\n" + code]
    else:
        command = [sys.executable, "-c", code]
    done = subprocess.run(
        command,
        cwd=_workdir(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )
    assert done.returncode == 0, (
        f"{example.name} exited {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
    for expected in example.outputs:
        wanted = expected.replace(DOCS_HOST, here)
        assert wanted in done.stdout, f"{example.name}: {wanted!r} not in\n{done.stdout[-3000:]}"


def test_every_server_log_line_is_json(sandbox: Sandbox) -> None:
    import json

    httpx.get(f"{sandbox.base}/", timeout=10)  # at least one request logged
    lines = [line for line in sandbox.stderr.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        json.loads(line)  # uvicorn's, alembic's and httpx's lines too


def _openapi() -> dict:
    return create_app(Settings(database_url="sqlite:///:memory:"), migrate_db=False).openapi()


def test_api_md_is_what_the_openapi_document_says() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    regenerated = reference.generated_doc(page, _openapi())
    assert page == regenerated, (
        "docs/api.md differs from the OpenAPI document: run "
        "`.venv/bin/python -m payrail.entrypoints.http.reference --write`"
    )


def test_every_error_code_payrail_answers_is_documented() -> None:
    documented = set(reference.documented_codes(_openapi())) | set(reference.GLOBAL_CODES)
    documented |= {"DATABASE_UNAVAILABLE"}

    def codes(cls: type) -> set[str]:
        return {cls.code} | {c for sub in cls.__subclasses__() for c in codes(sub)}

    answered = codes(domain_errors.PayrailError)
    # Raised inside the engine and turned into another answer before any route returns.
    never_answered = {"SERVICE_UNAVAILABLE"}
    assert answered - documented - never_answered == set()
