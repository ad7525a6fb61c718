"""The harness's own calls to the API (setup, checks, reconciliation), outside the load.

Synchronous httpx: under Locust's gevent monkeypatching its sockets are cooperative, so these
calls interleave with the load greenlets. Every answer is recorded like a load request, so a
500 on a balance read counts as a server error too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from payrail_tools.loadtest.stats import Recorder, classify

API_PREFIX = "/api/v1"
TIMEOUT_S = 120.0  # generous: reconciliation walks every payout, and a loaded server is slow
LIST_PAGE_MAX = 100  # the API's own page limit
LIST_PAGES_MAX = 2_000  # 200,000 payouts per project: far past any scenario


class HarnessError(Exception):
    """The harness could not run or measure (not a verdict on the server): exit code 2."""


@dataclass(frozen=True)
class Answer:
    status: int  # 0 when no HTTP answer came
    body: Any
    latency_ms: float
    headers: dict[str, str]

    @property
    def data(self) -> dict[str, Any]:
        data = self.body.get("data") if isinstance(self.body, dict) else None
        return data if isinstance(data, dict) else {}

    def describe(self) -> str:
        if self.status == 0:
            return "no answer"
        message = self.body.get("message") if isinstance(self.body, dict) else None
        return f"HTTP {self.status} {self.data.get('error') or ''} {message or ''}".strip()


class Api:
    def __init__(self, base_url: str, admin_key: str, control_key: str, recorder: Recorder) -> None:
        self.base_url = base_url
        self.admin_key = admin_key
        self.control_key = control_key
        self.recorder = recorder
        self.http = httpx.Client(base_url=base_url, timeout=TIMEOUT_S, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        op: str = "admin",
        params: dict[str, Any] | None = None,
    ) -> Answer:
        all_headers = {"apikey": key or self.admin_key, **(headers or {})}
        started = time.perf_counter()
        try:
            response = self.http.request(
                method, API_PREFIX + path, json=json, headers=all_headers, params=params
            )
        except httpx.HTTPError:
            latency = (time.perf_counter() - started) * 1000
            self.recorder.add(op, 0, "transport_error", latency, ok=False)
            return Answer(0, None, latency, {})
        latency = (time.perf_counter() - started) * 1000
        try:
            body = response.json()
        except ValueError:
            body = None
        outcome = classify(response.status_code, body)
        self.recorder.add(op, response.status_code, outcome, latency, response.is_success)
        return Answer(response.status_code, body, latency, dict(response.headers))

    def _need(self, answer: Answer, what: str, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
        if answer.status not in ok:
            hint = ""
            if answer.status in (401, 403):
                hint = " (pass the server's admin key with --admin-key)"
            raise HarnessError(f"{what}: {answer.describe()}{hint}")
        return answer.data

    # ------------------------------------------------------------ setup

    def health(self) -> None:
        try:
            response = self.http.get("/health", timeout=5.0)
        except httpx.HTTPError as exc:
            raise HarnessError(
                f"no payrail server answers at {self.base_url} ({type(exc).__name__}); start one "
                "(`make run`) or pass --start-server --database-url …"
            ) from None
        if response.status_code != 200:
            raise HarnessError(f"{self.base_url}/health answered HTTP {response.status_code}")

    def create_project(self, project_id: str) -> dict[str, Any]:
        answer = self.call("POST", "/projects", json={"id": project_id, "name": project_id})
        return self._need(answer, f"creating project {project_id}", (201,))

    def fund(self, project_id: str, amount_sats: int) -> dict[str, Any]:
        answer = self.call(
            "POST",
            f"/projects/{project_id}/fund",
            json={"amount": amount_sats},
            headers={"idempotency-key": f"loadtest-fund-{project_id}"},
        )
        return self._need(answer, f"funding project {project_id}")

    def balance(self, project_id: str) -> tuple[int, int]:
        answer = self.call("GET", f"/projects/{project_id}/balance", op="balance")
        data = self._need(answer, f"reading the balance of {project_id}")
        return int(data["balance"]), int(data["reserved"])

    def faults(self) -> dict[str, Any] | None:
        """The global failure-injection knobs, or None when the server has no sandbox endpoints.

        The admin key's: they apply to the run's own projects (which have no knobs of their
        own); a project key would read and set only its own project's knobs."""
        answer = self.call("GET", "/test/failure-injection", key=self.admin_key)
        if answer.status == 404:
            return None
        return self._need(answer, "reading failure injection")

    def set_faults(self, knobs: dict[str, Any]) -> dict[str, Any]:
        answer = self.call("POST", "/test/failure-injection", key=self.admin_key, json=knobs)
        return self._need(answer, "setting failure injection")

    # ------------------------------------------------------------ checks

    def payout(self, payout_id: str) -> dict[str, Any] | None:
        answer = self.call("GET", f"/payouts/{payout_id}", op="get")
        return answer.data if answer.status == 200 else None

    def payout_ids(self, project_id: str) -> list[str]:
        ids: list[str] = []
        cursor: str | None = None
        for _ in range(LIST_PAGES_MAX):
            params: dict[str, Any] = {"projectId": project_id, "limit": LIST_PAGE_MAX}
            if cursor:
                params["cursor"] = cursor
            answer = self.call("GET", "/payouts", params=params, op="list")
            data = self._need(answer, f"listing the payouts of {project_id}")
            ids += [p["id"] for p in data["payouts"]]
            cursor = data.get("nextCursor")
            if not cursor:
                return ids
        raise HarnessError(f"{project_id} has more than {LIST_PAGES_MAX} pages of payouts")

    def post_payout(self, key: str, body: dict[str, Any], op: str = "replay") -> Answer:
        return self.call("POST", "/payouts", key=key, json=body, op=op)

    def expire(self, payout_id: str, key: str | None = None) -> Answer:
        return self.call("POST", f"/test/expire/{payout_id}", key=key, op="expire")

    def reconciliation(self) -> dict[str, Any]:
        answer = self.call("GET", "/admin/reconciliation", op="reconcile")
        return self._need(answer, "GET /admin/reconciliation")
