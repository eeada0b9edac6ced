"""Several daemon processes on one host (`server.processes`), to use more than one core.

Each process is a full daemon bound to the same port with SO_REUSEPORT, so the kernel spreads incoming
connections across them; they share the work through PostgreSQL exactly as replicas on several hosts do.
The parent only supervises: it forwards SIGTERM/SIGINT to every process, and when one exits on its own
(a crash, a store that cannot be opened) it stops the others and exits with that process's code, so the
outer supervisor (Kubernetes, systemd) sees one failed unit and restarts it whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1


def run_processes(count: int, child: Callable[[], int], *, stop_timeout: float) -> int:
    """Fork `count` processes running `child()` (its return value is the exit code); return when all are gone.

    Forking happens before any event loop, thread or connection exists, so each process opens its own."""
    children: dict[int, int] = {}  # pid -> process number
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(children, signum)

    def reload(signum: int, frame: FrameType | None) -> None:
        _signal_all(children, signum)  # each process re-reads its secrets

    # Installed before forking, so a SIGTERM during start-up still reaches the processes already started.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    try:
        for number in range(count):
            if stopping:
                break
            pid = os.fork()
            if pid == 0:
                os._exit(_run_child(child))
            children[pid] = number
        code = 0
        deadline: float | None = None
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if deadline is not None and time.monotonic() > deadline:
                    log.error("processes %s did not stop in time; killing them", sorted(children.values()))
                    _signal_all(children, signal.SIGKILL)
                    deadline = None
                time.sleep(_POLL_SECONDS)
                continue
            if pid not in children:
                continue
            number = children.pop(pid)
            exit_code = os.waitstatus_to_exitcode(status)
            if not stopping:
                # One process gone on its own: the others are stopped too, and the whole unit fails.
                log.error("process %d (pid %d) exited with %d; stopping the others", number, pid, exit_code)
                stopping = True
                code = exit_code or 1
                _signal_all(children, signal.SIGTERM)
                deadline = time.monotonic() + stop_timeout
            elif exit_code != 0 and code == 0:
                code = exit_code
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_all(children: dict[int, int], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet
            os.kill(pid, signum)


def _run_child(child: Callable[[], int]) -> int:
    """A forked process: run, report anything raised, flush, and never return into the parent's code."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the daemon's loop handles it: a reload must not kill
    try:
        code = child()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    return code
