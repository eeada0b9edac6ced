"""`responder test-rules FILE...`: run rule unit tests; a readable diff and exit 1 on any failure."""

from __future__ import annotations

import argparse
from pathlib import Path

from responder.cli._common import CliError, add_config_args, config_from_args, out, run_cli


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("test-rules", help="run rule unit tests (YAML cases beside the rules)")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="test files, or directories searched for *.test.yaml")
    add_config_args(parser)
    parser.set_defaults(func=command)


def expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted([*path.rglob("*.test.yaml"), *path.rglob("*.test.yml")])
        elif path.exists():
            files.append(path)
        else:
            raise CliError(f"{path}: no such file")
    return files


@run_cli
def command(args: argparse.Namespace) -> int:
    import asyncio

    from rich.markup import escape

    from responder.rule_tests import run_files

    config = config_from_args(args)
    files = expand(args.files)
    if not files:
        raise CliError("no test files found")
    try:
        results = asyncio.run(run_files(config, files))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    failed = [r for r in results if not r.passed]
    for result in results:
        mark = "[green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
        out.print(f"{mark} {escape(str(result.file))}: {escape(result.name)}")
        for problem in result.problems:
            out.print(escape("    " + problem.replace("\n", "\n    ")), highlight=False)
    out.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
