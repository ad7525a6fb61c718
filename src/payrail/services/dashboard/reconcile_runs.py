"""Reconciliation results kept in the database, so the dashboard can show the last one.

A run is the invariant checker of services/reconcile.py; this module only stores its report
(bounded: the counts of every kind, the first DISCREPANCIES_KEPT_MAX in full).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert, select

from payrail.bootstrap import Runtime
from payrail.db.tables import reconcile_runs
from payrail.services import reconcile
from payrail.support.clock import iso

R = reconcile_runs.c
DISCREPANCIES_KEPT_MAX = 500


async def record(rt: Runtime, report: reconcile.Report, source: str) -> None:
    data = reconcile.report_dict(report)
    data["discrepancies"] = data["discrepancies"][:DISCREPANCIES_KEPT_MAX]
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(reconcile_runs).values(
                at_ms=rt.clock.now_ms(),
                source=source[:32],
                clean=report.clean,
                payouts_checked=report.payouts_checked,
                orders_checked=report.orders_checked,
                discrepancy_count=len(report.discrepancies),
                report=json.dumps(data),
            )
        )


async def run_and_record(rt: Runtime, source: str) -> reconcile.Report:
    """Reconcile what changed since the checkpoint now (the full audit is `payrail reconcile
    --full`, never in an API process), publish the metrics as every run does, keep the result."""
    report = await reconcile.reconcile_incremental(rt)
    reconcile.export_metrics(report, rt.clock.now_ms() / 1000)
    await record(rt, report, source)
    return report


async def last(rt: Runtime) -> dict[str, Any] | None:
    """The newest kept result, or None if reconciliation never ran from here."""
    async with rt.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(reconcile_runs).order_by(R.at_ms.desc(), R.id.desc()).limit(1)
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    report = json.loads(row["report"])
    return {
        "at": iso(row["at_ms"]),
        "atMs": row["at_ms"],
        "source": row["source"],
        "clean": bool(row["clean"]),
        "payoutsChecked": row["payouts_checked"],
        "ordersChecked": row["orders_checked"],
        "discrepancyCount": row["discrepancy_count"],
        "counts": report["counts"],
        "discrepancies": report["discrepancies"],
        "shown": len(report["discrepancies"]),
    }
