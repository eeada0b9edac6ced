"""`command.run`: run an allow-listed executable with an argument list, never through a shell.

The executable and its fixed flags are written in the rule (`argv`); values from the alert go in `args`,
which may not look like options or climb directories. The process gets a minimal environment, a time
limit (its whole process group is killed on expiry) and a cap on the output kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from responder.collectors.base import Collector, CollectorContext, Finding, registry
from responder.config import CommandsConfig, Duration
from responder.evidence import EvidenceStatus

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 65536

# `scheme:/...` or `file:...`, whatever the case.
URL_LIKE = re.compile(r"(?i)^(?:[a-z][a-z0-9+.-]*:/|file:)")
# One printable argument with no control characters.
CommandArg = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,512}$")]


class CommandParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The executable and fixed flags, literally in the rule: `[pg_isready, -h, db.internal]`.
    argv: list[CommandArg] = Field(min_length=1, max_length=64, json_schema_extra={"fixed": True})
    # Values appended after argv, typically rendered from alert labels.
    args: list[CommandArg] = Field(default_factory=list, max_length=32)
    # Allow `/` in args (still never `..`): set only where an arg is meant to be a path.
    args_may_be_paths: bool = False
    timeout: Duration | None = Field(default=None, gt=0, le=300)

    @model_validator(mode="after")
    def _safe_args(self) -> CommandParams:
        for i, arg in enumerate(self.args):
            if arg.startswith("-"):
                raise ValueError(f"args.{i}: {arg!r} starts with '-' (it would be read as an option)")
            if ".." in Path(arg).parts or (not self.args_may_be_paths and "/" in arg):
                raise ValueError(f"args.{i}: {arg!r} is a path; set args_may_be_paths (and never use '..')")
            # A URL is not a path: `file:///etc/shadow` would make curl or git read any local file.
            if URL_LIKE.match(arg):
                raise ValueError(f"args.{i}: {arg!r} looks like a URL; args carry names and paths only")
        return self


def resolve_executable(name: str, config: CommandsConfig) -> str:
    """The absolute path of an allowed executable; anything not in the allow-list is refused."""
    for allowed in config.allow:
        if name == allowed or (os.path.isabs(allowed) and name == os.path.basename(allowed)):
            found = allowed if os.path.isabs(allowed) else shutil.which(allowed, path=SAFE_PATH)
            if found and os.access(found, os.X_OK):
                return found
            raise PermissionError(f"{name!r} is allowed but not found as an executable")
    raise PermissionError(f"{name!r} is not in collectors.commands.allow "
                          f"(allowed: {', '.join(config.allow) or 'nothing'})")


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, int]:
    """Keep the first `limit` bytes, count and discard the rest so the child never blocks on a full pipe."""
    kept = bytearray()
    total = 0
    while chunk := await stream.read(READ_CHUNK):
        total += len(chunk)
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept), total


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@registry.register
class RunCommand(Collector[CommandParams]):
    name = "command.run"
    params_model = CommandParams

    async def collect(self, params: CommandParams, ctx: CollectorContext) -> Finding:
        config = ctx.targets.config.collectors.commands
        executable = resolve_executable(params.argv[0], config)
        argv = [executable, *params.argv[1:], *params.args]
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8",
               **{name: os.environ[name] for name in config.pass_env if name in os.environ}}
        timeout = params.timeout or config.timeout
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        assert process.stdout is not None and process.stderr is not None
        readers = asyncio.gather(_read_capped(process.stdout, config.output_bytes),
                                 _read_capped(process.stderr, config.output_bytes))
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                (stdout, out_total), (stderr, err_total) = await readers
                await process.wait()
        except TimeoutError:
            timed_out = True
        finally:
            # Also on cancellation: the command and anything it started never outlive the collector.
            if process.returncode is None:
                _kill_group(process)
                await process.wait()
            readers.cancel()
        if timed_out:
            return Finding(f"{params.argv[0]} timed out after {timeout:g}s",
                           {"argv": argv, "timeout_s": timeout, "exit_code": None},
                           f"killed after {timeout:g}s", EvidenceStatus.TIMEOUT)
        duration = round((time.monotonic() - started) * 1000, 1)
        truncated = out_total > len(stdout) or err_total > len(stderr)
        payload = {"argv": argv, "exit_code": process.returncode, "duration_ms": duration,
                   "stdout_bytes": out_total, "stderr_bytes": err_total, "output_truncated": truncated}
        text = stdout.decode("utf-8", errors="replace")
        if stderr:
            text += ("\n" if text and not text.endswith("\n") else "") + "--- stderr ---\n" + \
                stderr.decode("utf-8", errors="replace")
        if truncated:
            text += f"\n… [output cut at {config.output_bytes} bytes per stream]"
        return Finding(f"{' '.join([params.argv[0], *argv[1:]])[:200]}: exit {process.returncode}", payload,
                       text.rstrip())
