"""What the ZBD-compatible way in costs over payrail's own: the same payouts, both ways.

    .venv/bin/python -m payrail_tools.bench_zbd [--payouts 300] [--database-url sqlite:///…]

In process (the ASGI app, no network, SQLite by default, one client): N gamertag payouts of
1,000 sats through `POST /api/v1/payouts`, then N through `POST /v0/gamertag/send-payment`,
alternating in rounds of 50 so that neither side gets the warmer half of the run. Prints
payouts/s and p50/p99 latency per side, and checks the money: both sides charged exactly
N × 1,020 sats. A figure, never an assertion on time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from payrail.bootstrap import build_runtime
from payrail.config import Settings
from payrail.db.migrate import upgrade
from payrail.entrypoints.http.app import create_app
from payrail.services import projects

KEY = "bench_zbd_key_0123456789"
ROUND = 50


async def run(payouts: int, database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        sandbox_api_key=KEY,
        run_worker=False,
        rate_limit_per_hour=1_000_000,
        reconcile_interval_s=0,
    )
    upgrade(database_url)
    rt = build_runtime(settings)
    await projects.seed_sandbox(rt)
    await projects.fund(rt, "project_test_001", payouts * 2 * 1_020, "bench-zbd")
    app = create_app(settings, runtime=rt, migrate_db=False)
    timings: dict[str, list[float]] = {"api/v1": [], "v0 (ZBD)": []}
    start_balance = (await projects.balance(rt, "project_test_001"))["balance"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bench", headers={"apikey": KEY}
    ) as client:

        async def own(i: int) -> httpx.Response:
            body = {"gamertag": f"b{i % 500}", "amount": 1000, "projectId": "project_test_001"}
            return await client.post("/api/v1/payouts", json=body)

        async def zbd(i: int) -> httpx.Response:
            body = {"gamertag": f"z{i % 500}", "amount": "1000000", "description": "bench"}
            return await client.post("/v0/gamertag/send-payment", json=body)

        done = 0
        while done < payouts:
            for name, send in (("api/v1", own), ("v0 (ZBD)", zbd)):
                for i in range(done, min(done + ROUND, payouts)):
                    t0 = time.perf_counter()
                    response = await send(i)
                    timings[name].append(time.perf_counter() - t0)
                    assert response.status_code in (200, 201), response.text
            done += ROUND
    spent = start_balance - (await projects.balance(rt, "project_test_001"))["balance"]
    await rt.aclose()
    print(f"{payouts} payouts each way, one client, {database_url.split(':', 1)[0]}, in process")
    for name, values in timings.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"  {name:9} {len(values) / sum(values):7.1f} payouts/s   "
            f"p50 {statistics.median(values) * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms"
        )
    expected = payouts * 2 * 1_020
    print(f"  charged {spent} sats for {2 * payouts} payouts (expected {expected}): "
          + ("ok" if spent == expected else "MISMATCH"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payouts", type=int, default=300)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    url = args.database_url
    if not url:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench_zbd_')) / 'payrail.db'}"
    asyncio.run(run(args.payouts, url))


if __name__ == "__main__":
    main()
