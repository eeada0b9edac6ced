"""`responder check`: validate the config and every rule file, and say what is wrong where."""

from __future__ import annotations

import argparse

from responder.cli._common import CliError, add_config_args, config_from_args, err, out, ruleset_from_config
from responder.daemon import build_intakes
from responder.plugins import UnknownPlugin


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("check", help="validate the config and rules; exit 1 on any problem")
    add_config_args(parser, rules=True)
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        ruleset, problems = ruleset_from_config(config)
        intakes = build_intakes(config)
    except (CliError, UnknownPlugin) as exc:
        for line in str(exc).splitlines():
            err.print(f"[bold red]error:[/] {line}", soft_wrap=True)
        return 1
    origin = str(config.source or "(defaults)")
    for intake in intakes:
        for warning in intake.auth_warnings():
            err.print(f"[yellow]warning:[/] {origin}: intakes.{intake.name}.auth: {warning}", soft_wrap=True)
    if config.sinks.slack.permissions.approve is None and any(
            m.requires_approval for r in ruleset.rules for m in r.mitigations):
        err.print(f"[yellow]warning:[/] {origin}: sinks.slack.permissions.approve: rules ask for approvals but nobody"
                  " may approve from Slack until this lists users or user groups", soft_wrap=True)
    found: list[object] = [*problems, *(
        f"{origin}: rule {rule.name!r}: alertmanager: no alertmanager target named {rule.alertmanager!r}"
        for rule in ruleset.rules if rule.alertmanager is not None
        and rule.alertmanager not in config.targets.alertmanager)]
    for problem in found:
        err.print(f"[bold red]error:[/] {problem}", soft_wrap=True)
    if found:
        err.print(f"{len(found)} problem(s) found")
        return 1
    out.print(f"ok: {origin}, {len(ruleset.rules)} rule(s) from "
              f"{', '.join(str(d) for d in config.rule_dirs())}", soft_wrap=True)
    return 0
