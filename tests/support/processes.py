"""Start and stop real processes for tests: the daemon itself, and the binaries it works with."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]


class ManagedProcess:
    """A subprocess with its output in a file, stopped (and reaped) on exit."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                     start_new_session=True)
        log.close()
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_http(url: str, timeout: float = 20, proc: ManagedProcess | None = None, status: int = 200) -> None:
    """Poll `url` until it answers `status`; fail early with the process output if it died."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.argv[0]} exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
            try:
                async with session.get(url) as resp:
                    if resp.status == status:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                tail = proc.output()[-3000:] if proc else ""
                raise TimeoutError(f"{url} did not answer {status} within {timeout}s\n{tail}")
            await asyncio.sleep(0.1)


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def responder_daemon(config: Path, port: int, log_path: Path, *, extra_env: dict[str, str] | None = None,
                     args: Sequence[str] = ()) -> ManagedProcess:
    """`python -m responder serve` as a real subprocess."""
    argv = [sys.executable, "-m", "responder", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}",
            *args]
    return ManagedProcess(argv, log_path, env=daemon_env(extra_env), cwd=REPO)
