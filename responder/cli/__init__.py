"""The `responder` command. Each subcommand lives in its own module here and registers itself:
a module with `register(subparsers)` that sets `func` on its parser.

Modules import what a command needs inside the command, not at the top: building the parser imports
every module here, and `responder --help` should not pay for the store, pydantic or the client libraries."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from responder import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="responder",
        description="Receives alerts, gathers evidence, applies guarded fixes, posts one thread per incident.",
    )
    parser.add_argument("--version", action="version", version=f"responder {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asking for completions (`responder completion`)
        import argcomplete

        argcomplete.autocomplete(parser)  # answers and exits
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
