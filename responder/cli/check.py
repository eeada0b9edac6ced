"""`responder check`: validate the config and every rule file in one pass, and say what is wrong where
(file, line, rule, key); cross-check rules against the configured targets; exit 1 on any error."""

from __future__ import annotations

import argparse
import json

from responder.cli._common import add_config_args, config_overrides, err, out


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("check", help="validate the config and rules; exit 1 on any error")
    add_config_args(parser, rules=True)
    parser.add_argument("--json", action="store_true", help="print the problems as a JSON object")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from responder.checks import check_all

    report = check_all(args.config, config_overrides(args))
    errors = [p for p in report.problems if p.severity == "error"]
    if args.json:
        print(json.dumps({"ok": not errors, "config": report.origin, "rules": report.rule_count,
                          "rule_dirs": report.rule_dirs, "problems": [p.as_dict() for p in report.problems]},
                         indent=2))
        return 1 if errors else 0
    for problem in report.problems:
        style = "[bold red]error:[/]" if problem.severity == "error" else "[yellow]warning:[/]"
        err.print(f"{style} {problem}", soft_wrap=True, markup=True, highlight=False)
    warnings = len(report.problems) - len(errors)
    if errors:
        err.print(f"{len(errors)} error(s), {warnings} warning(s)")
        return 1
    out.print(f"ok: {report.origin}, {report.rule_count} rule(s) from {', '.join(report.rule_dirs)}"
              f"{f', {warnings} warning(s)' if warnings else ''}", soft_wrap=True)
    return 0
