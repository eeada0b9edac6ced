"""`responder serve`: run the daemon."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from responder.cli._common import (
    CliError,
    add_config_args,
    config_from_args,
    err,
    fail,
    ruleset_from_config,
    run_cli,
)

if TYPE_CHECKING:
    import asyncio

    from responder.config import Config
    from responder.rules.engine import RuleSet


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="run the daemon")
    add_config_args(parser, rules=True, store=True)
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (overrides server.listen)")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="daemon processes sharing the port, PostgreSQL only (overrides server.processes)")
    parser.set_defaults(func=command)


@run_cli
def command(args: argparse.Namespace) -> int:
    from responder.intake import build_intakes
    from responder.logs import setup_logging
    from responder.processes import run_processes

    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["server.listen"] = args.listen
    if args.processes is not None:
        overrides["server.processes"] = args.processes
    config = config_from_args(args, **overrides)
    setup_logging(config.logging)
    ruleset, problems = ruleset_from_config(config)
    if problems:
        raise CliError("rules have problems; fix them or run `responder check`:\n"
                       + "\n".join(str(p) for p in problems))
    for intake in build_intakes(config):
        for warning in intake.auth_warnings():
            err.print(f"[yellow]warning:[/] {warning}")
    if config.server.processes == 1:
        return run_daemon(config, ruleset)

    def one_of_several() -> int:
        try:
            return run_daemon(config, ruleset)
        except CliError as exc:
            return fail(str(exc))

    return run_processes(config.server.processes, one_of_several, stop_timeout=config.server.drain_seconds + 10)


def run_daemon(config: Config, ruleset: RuleSet) -> int:
    import asyncio

    from responder.daemon import Daemon, DaemonFailed, serve
    from responder.server import build_app
    from responder.store import StoreUnavailable

    daemon = Daemon(config, ruleset)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config.server.event_loop)) as runner:
            runner.run(serve(daemon, build_app(daemon)))
    except StoreUnavailable as exc:
        raise CliError(f"cannot open the store: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot listen on {config.server.listen}: {exc.strerror or exc}") from None
    except DaemonFailed as exc:
        raise CliError(f"stopped after a failure: {exc}") from None
    return 0


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """None: the standard library's loop."""
    if name == "uvloop":
        import uvloop  # only when configured: a daemon on the standard loop does not load it

        return uvloop.new_event_loop
    return None
