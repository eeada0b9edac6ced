"""`responder serve`: run the daemon."""

from __future__ import annotations

import argparse
import asyncio

from responder.cli._common import (
    CliError,
    add_config_args,
    config_from_args,
    err,
    ruleset_from_config,
    run_cli,
)
from responder.daemon import Daemon, DaemonFailed, serve
from responder.logs import setup_logging
from responder.server import build_app
from responder.store import StoreUnavailable


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="run the daemon")
    add_config_args(parser, rules=True, store=True)
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (overrides server.listen)")
    parser.set_defaults(func=command)


@run_cli
def command(args: argparse.Namespace) -> int:
    config = config_from_args(args, **({"server.listen": args.listen} if args.listen else {}))
    setup_logging(config.logging)
    ruleset, problems = ruleset_from_config(config)
    if problems:
        raise CliError("rules have problems; fix them or run `responder check`:\n"
                       + "\n".join(str(p) for p in problems))
    daemon = Daemon(config, ruleset)
    for intake in daemon.intakes:
        for warning in intake.auth_warnings():
            err.print(f"[yellow]warning:[/] {warning}")
    try:
        asyncio.run(serve(daemon, build_app(daemon)))
    except StoreUnavailable as exc:
        raise CliError(f"cannot open the store: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot listen on {config.server.listen}: {exc.strerror or exc}") from None
    except DaemonFailed as exc:
        raise CliError(f"stopped after a failure: {exc}") from None
    return 0
