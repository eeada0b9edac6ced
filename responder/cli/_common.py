"""What every subcommand shares: loading config, rules and the store, and printing errors."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from responder.config import Config
    from responder.rules.engine import RuleSet
    from responder.rules.loader import RuleProblem
    from responder.store import Store


PIPE_WIDTH = 160


class LazyConsole:
    """A rich Console made on first use, so `responder --help` does not pay for importing rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def _stream(self) -> Any:
        return sys.stderr if self._options.get("stderr") else sys.stdout

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            options = dict(self._options)
            if not self._stream().isatty() and "COLUMNS" not in os.environ:
                # Piped or redirected: rich would assume 80 columns; tables and paths read better wider.
                options["width"] = PIPE_WIDTH
            self._console = Console(**options)
        return getattr(self._console, name)


err = LazyConsole(stderr=True, highlight=False)
out = LazyConsole(highlight=False)


class CliError(Exception):
    """A problem to print (without a traceback) before exiting non-zero."""


def add_config_args(parser: argparse.ArgumentParser, *, rules: bool = False, store: bool = False) -> None:
    parser.add_argument("--config", "-c", type=Path, help="config file (default: built-in defaults)")
    if rules:
        parser.add_argument("--rules", action="append", type=Path, metavar="DIR",
                            help="rule directory or file; repeat for several; replaces the configured ones")
    if store:
        parser.add_argument("--store", metavar="URL", help="store URL (sqlite:///PATH or postgresql://...)")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys set on the command line (--rules, --store)."""
    overrides: dict[str, Any] = {}
    if getattr(args, "rules", None):
        overrides["rules.dirs"] = [str(p.resolve()) for p in args.rules]
    if getattr(args, "store", None):
        overrides["store.url"] = args.store
    return overrides


def config_from_args(args: argparse.Namespace, **extra: Any) -> Config:
    from responder.config import ConfigError, load_config

    try:
        config = load_config(args.config, {**config_overrides(args), **extra})
    except ConfigError as exc:
        raise CliError("\n".join(map(str, exc.problems))) from None
    load_plugins(config)
    return config


def load_plugins(config: Config) -> None:
    for module in config.plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CliError(f"{config.source or '(config)'}: plugins: cannot import {module!r}: {exc}") from None


def ruleset_from_config(config: Config) -> tuple[RuleSet, list[RuleProblem]]:
    from responder.rules.engine import RuleSet
    from responder.rules.loader import load_rules

    rules, problems = load_rules(config.rule_dirs())
    try:
        return RuleSet(rules, config.rules.default_rule), problems
    except ValueError as exc:
        raise CliError(f"{config.source or '(config)'}: rules.default_rule: {exc}") from None


@asynccontextmanager
async def cli_store(args: argparse.Namespace, config: Config | None = None) -> AsyncIterator[Store]:
    """`async with cli_store(args) as store:` the store of the command's config (`config`, when the command
    has loaded it already), closed on the way out. One that cannot be opened is a CliError naming where the
    URL was set (--store or the config file), the URL with its password masked, and why."""
    from responder.config import secret_values
    from responder.problems import Problem
    from responder.redaction import Redactor
    from responder.store import StoreUnavailable, open_store

    config = config or config_from_args(args)
    url = config.store_url()
    try:
        store = await open_store(url, synchronous=config.store.sqlite_synchronous, pool_size=2,
                                 timeout=config.store.connect_timeout)
    except (StoreUnavailable, OSError) as exc:
        redact = Redactor(secret_values(config), config.redact).text
        origin, line = ("--store", None) if getattr(args, "store", None) \
            else (str(config.source or "(defaults)"), config.line("store.url"))
        raise CliError(str(Problem(origin, None, "store.url", redact(f"cannot open the store {url}: {exc}"),
                                   line))) from None
    try:
        yield store
    finally:
        await store.close()


def fail(message: str) -> int:
    """Print each line of `message` as an error (one problem a line, as `check` does); exit code 2."""
    from rich.markup import escape

    for line in message.splitlines() or [""]:
        err.print(f"[bold red]error:[/] {escape(line)}", markup=True, soft_wrap=True)
    return 2


def run_cli(func: Any) -> Any:
    """Decorator: turn CliError into a printed message and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            code: int = func(args)
        except CliError as exc:
            return fail(str(exc))
        return code

    wrapper.__doc__ = func.__doc__
    return wrapper


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def fold_table(*headers: str) -> Table:
    """A table that never cuts a value ("HighErr…"): values wrap, and a word too long for its column folds
    onto the next line. Print it through `fitted`."""
    from rich.table import Table

    table = Table()
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def fitted(table: Table, text: tuple[str, ...] = (), longest: int = 40, text_width: int = 20) -> Table:
    """Names, ids and keys kept whole (each column at least as wide as its longest value, up to `longest`)
    while the `text` columns, free text, give way first; on a terminal too narrow for that, the widest
    columns fold too."""
    widths = {str(column.header): min(max(len(str(c)) for c in [column.header, *column.cells]), longest)
              for column in table.columns if column.header not in text}
    folding = 8  # room a folded column keeps
    budget = out.width - 3 * len(table.columns) - 1 - text_width * len(text) - folding * len(widths)
    while widths and sum(w - folding for w in widths.values()) > budget:
        del widths[max(widths, key=lambda header: widths[header])]
    for column in table.columns:
        column.min_width = widths.get(str(column.header))
    return table


def add_audit_list(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], command: str, help: str,
                   what: str, func: Callable[[argparse.Namespace], int]) -> None:
    """`responder COMMAND list [--incident ID] [--limit N] [--json]`: one of the audits, newest first."""
    parser = subparsers.add_parser(command, help=help)
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help=f"list {what}, newest first")
    add_config_args(listing, store=True)
    listing.add_argument("--incident", type=int, metavar="ID", help=f"only this incident's {what}")
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=func)
