"""`payrail loadtest`: check the arguments, maybe start a server, run the scenario.

Exit codes: 0 every threshold and invariant held; 1 one did not (each named on its own line);
2 the harness could not run (bad arguments, no server, refused target).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from payrail_tools.loadtest import thresholds
from payrail_tools.loadtest.guard import TargetRefused, database_target, loopback_base_url

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_HARNESS = 2
DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_ADMIN_KEY = "sandbox_admin_key_change_me"  # config.DEFAULT_ADMIN_KEY, the sandbox's
DEFAULT_API_KEY = "test_api_key_12345"  # config.DEFAULT_SANDBOX_API_KEY
LOG_WIDTH_CHARS = 140
DURATION_SCALE_MIN = 0.01
DURATION_SCALE_MAX = 10.0
# The scenarios --legacy applies to (they inject node timeouts); kept here so arguments are
# checked before Locust, and its gevent monkeypatching, is imported.
CHAOS_SCENARIOS = frozenset({"timeout_recovery", "spike_timeouts", "callback_test"})
SCENARIO_NAMES = (
    "gaming_rewards",
    "rate_limit_stress",
    "duplicate_detection",
    "expiration_test",
    "callback_test",
    "timeout_recovery",
    "spike_timeouts",
)


class UsageError(ValueError):
    pass


class MissingExtra(UsageError):
    """An optional dependency of this command is not installed; the message says how."""


LOADTEST_EXTRA_HINT = (
    "payrail loadtest needs Locust, from the loadtest extra: pip install 'payrail[loadtest]' "
    "(in a clone: .venv/bin/pip install --require-hashes -r requirements/dev.lock, "
    "which make run and make test do)"
)


def require_locust() -> None:
    """Refuse early, with the install command, when the loadtest extra is missing."""
    try:
        import locust  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "locust":
            raise
        raise MissingExtra(LOADTEST_EXTRA_HINT) from None


@dataclass
class Arguments:
    scenario: str
    url: str = DEFAULT_URL
    duration_scale: float = 1.0
    report_dir: Path | None = None
    api_key: str | None = None
    admin_key: str | None = None
    thresholds: list[str] = field(default_factory=list)
    legacy: bool = False
    start_server: bool = False
    database_url: str | None = None


def validate(args: Arguments) -> str:
    """Raise UsageError/TargetRefused/ThresholdError on bad arguments; return the base URL."""
    if args.scenario not in SCENARIO_NAMES:
        raise UsageError(
            f"unknown scenario {args.scenario!r}; choose one of {', '.join(SCENARIO_NAMES)}"
        )
    if not DURATION_SCALE_MIN <= args.duration_scale <= DURATION_SCALE_MAX:
        raise UsageError(
            f"--duration-scale must be from {DURATION_SCALE_MIN} to {DURATION_SCALE_MAX}"
        )
    if args.legacy and args.scenario not in CHAOS_SCENARIOS:
        raise UsageError(
            f"--legacy applies to the chaos scenarios ({', '.join(sorted(CHAOS_SCENARIOS))})"
        )
    thresholds.merge([], args.thresholds)
    if args.start_server:
        if not args.database_url:
            raise UsageError(
                "--start-server needs --database-url (postgresql://…@127.0.0.1/NAME or "
                "sqlite:///PATH); that database is dropped and recreated"
            )
        database_target(args.database_url)
        return ""
    if args.database_url:
        raise UsageError("--database-url is only used with --start-server")
    return loopback_base_url(args.url)


def run(args: Arguments, console: Console | None = None) -> int:
    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:  # CI logs: wide tables, lines that grep whole
            console = Console(highlight=False, width=LOG_WIDTH_CHARS)
    try:
        base_url = validate(args)
        require_locust()
    except (UsageError, TargetRefused, thresholds.ThresholdError) as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return EXIT_HARNESS
    # From here on Locust (and gevent's monkeypatching) is loaded.
    from payrail_tools.loadtest import engine, server
    from payrail_tools.loadtest.api import HarnessError

    report_dir = args.report_dir or Path("reports") / "loadtest" / args.scenario
    admin_key = args.admin_key or os.environ.get("PAYRAIL_ADMIN_KEY") or DEFAULT_ADMIN_KEY
    control_key = args.api_key or os.environ.get("PAYRAIL_SANDBOX_API_KEY") or DEFAULT_API_KEY
    started = None
    try:
        server_info = None
        if args.start_server:
            assert args.database_url is not None
            target = database_target(args.database_url)
            console.print(f"starting payrail serve on a fresh {target.kind} database {target.name}")
            started = server.start(target, report_dir / "server.log")
            base_url, admin_key, control_key = (
                started.base_url,
                started.admin_key,
                started.sandbox_key,
            )
            server_info = {
                "databaseUrl": args.database_url,
                "log": str(started.log_path),
                "pid": started.process.pid,
            }
            console.print(f"server {base_url} (pid {started.process.pid}, log {started.log_path})")
        options = engine.Options(
            scenario=args.scenario,
            base_url=base_url,
            admin_key=admin_key,
            control_key=control_key,
            duration_scale=args.duration_scale,
            report_dir=report_dir,
            thresholds=list(args.thresholds),
            legacy=args.legacy,
            server=server_info,
        )
        code, _ = engine.run(options, console)
        return code
    except HarnessError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return EXIT_HARNESS
    except KeyboardInterrupt:
        console.print("interrupted", style="red")
        return EXIT_HARNESS
    finally:
        if started is not None:
            server.stop(started)
