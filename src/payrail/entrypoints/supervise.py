"""Process supervision for `payrail serve --workers N`: children never outlive their parent.

uvicorn's parent binds the port and hands the listening socket to its children. If the parent
dies by SIGKILL, children that kept running would keep the socket open (a restart fails with
"Address already in use") and keep answering and running jobs unsupervised. Two guards, so
that either one is enough:

- Linux: prctl(PR_SET_PDEATHSIG, SIGTERM) in each child, so the kernel signals it the moment
  its parent dies;
- everywhere: a daemon thread that polls the parent pid and sends SIGTERM to its own process
  when the child has been re-parented.

SIGTERM is uvicorn's graceful shutdown: the child stops listening at once, lets in-flight
requests finish (at most `DRAIN_TIMEOUT_S`), then the lifespan stops the worker loop, which
finishes the jobs it holds (an unfinished job's lease simply expires and another worker
takes it over).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

SUPERVISOR_PID_ENV = "PAYRAIL_SUPERVISOR_PID"  # set by `serve` for its children
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_MS = 250  # how often the fallback thread looks at the parent pid
DRAIN_TIMEOUT_S = 20  # in-flight requests get this long after SIGTERM; then they are cut


def mark_supervisor(env: dict[str, str] | None = None) -> None:
    """Called by the parent before it starts its children: they learn who their parent is."""
    target = os.environ if env is None else env
    target[SUPERVISOR_PID_ENV] = str(os.getpid())


def _set_parent_death_signal(sig: int) -> bool:
    """Ask the Linux kernel to send `sig` when our parent dies. False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return False
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(PARENT_POLL_MS / 1000)


def guard_child() -> str:
    """In a server child: exit (gracefully) when the supervising parent dies.

    Does nothing in the parent itself (one process, `--workers 1`) or without a supervisor.
    Returns which guard was armed, for the log: "pdeathsig+watch", "watch" or "none".
    """
    raw = os.environ.get(SUPERVISOR_PID_ENV, "")
    if not raw.isdigit() or int(raw) == os.getpid():
        return "none"
    parent_pid = int(raw)
    armed = "pdeathsig+watch" if _set_parent_death_signal(signal.SIGTERM) else "watch"
    # The parent may have died before the prctl above: then we are already re-parented.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="payrail-parent-watch", daemon=True
    ).start()
    return armed
