"""Loopback only: the harness sends load, flips fault knobs and may drop a database.

Everything it touches must be on this machine, so a target is accepted only when its host is
a loopback IP literal (or `localhost`, pinned to 127.0.0.1). Names are never resolved: a DNS
name that happens to point at 127.0.0.1 today is refused too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

API_PATH = "/api/v1"
PROTECTED_DATABASES = frozenset({"postgres", "test", "template0", "template1"})


class TargetRefused(ValueError):
    """A URL the harness will not touch; the message says what to pass instead."""


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_netloc(url: str, what: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        raise TargetRefused(f"{what} {url!r} has no host; use e.g. http://127.0.0.1:3000")
    if not is_loopback_host(host):
        raise TargetRefused(
            f"refusing {what} {url!r}: host {host!r} is not loopback. The load harness only "
            "targets this machine (127.0.0.1)."
        )
    try:
        port = parts.port
    except ValueError:
        raise TargetRefused(f"{what} {url!r} has an invalid port") from None
    if host.lower() == "localhost":
        host = "127.0.0.1"
    return parts.scheme, host, port


def loopback_base_url(url: str) -> str:
    """`http://127.0.0.1:3000` from what the user passed; raises TargetRefused otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"--url {url!r} must be http:// or https://")
    if parts.username or parts.password:
        raise TargetRefused(f"--url {url!r} must not carry credentials; use --api-key")
    if parts.query or parts.fragment:
        raise TargetRefused(f"--url {url!r} must not have a query or fragment")
    if parts.path.rstrip("/") not in ("", API_PATH):
        raise TargetRefused(f"--url {url!r}: give the server root, e.g. http://127.0.0.1:3000")
    scheme, host, port = _loopback_netloc(url.strip(), "--url")
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True)
class DatabaseTarget:
    url: str
    kind: str  # sqlite | postgresql
    name: str  # database name, or the SQLite file path

    @property
    def sqlite_path(self) -> Path:
        assert self.kind == "sqlite"
        return Path(self.name)


def database_target(url: str) -> DatabaseTarget:
    """A database `--start-server` may drop and create: loopback PostgreSQL or a SQLite file."""
    url = url.strip()
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path.startswith(":memory:"):
            raise TargetRefused("--database-url sqlite:///PATH needs a file path")
        return DatabaseTarget(url, "sqlite", path)
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise TargetRefused(
            f"--database-url {url!r}: use postgresql://user@127.0.0.1:5432/NAME or sqlite:///PATH"
        )
    _loopback_netloc(url, "--database-url")
    name = parts.path.lstrip("/")
    if not name or "/" in name:
        raise TargetRefused(f"--database-url {url!r} must name a database")
    if name in PROTECTED_DATABASES:
        raise TargetRefused(
            f"refusing to recreate database {name!r}: name one the harness may drop, "
            "e.g. postgresql://postgres@127.0.0.1:5432/payrail_chaos"
        )
    return DatabaseTarget(url, "postgresql", name)
