"""`responder explain FILE`: which rule an alert would match and why, and what would run. Runs nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from responder.cli._common import (
    CliError,
    add_config_args,
    cli_store,
    config_from_args,
    out,
    ruleset_from_config,
    run_cli,
)

if TYPE_CHECKING:
    from responder.config import Config
    from responder.preview import AlertPreview
    from responder.steps import RenderedStep


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("explain", help="show which rule a payload matches and what would run")
    parser.add_argument("file", type=Path, help="a saved webhook payload (JSON)")
    add_config_args(parser, rules=True)
    parser.add_argument("--source", choices=["alertmanager", "grafana", "pagerduty"], help="payload kind")
    parser.set_defaults(func=command)


def show(p: AlertPreview, config: Config) -> None:
    from rich.markup import escape

    from responder.checks import rendered_target
    from responder.preview import as_incident, conditions_now, step_params, why_not
    from responder.rules.model import MitigationSpec

    labels = ", ".join(f"{k}={v}" for k, v in sorted(p.alert.labels.items()))
    out.print(f"[bold]alert {escape(p.alert.name or '(no alertname)')}[/] ({p.alert.status.value}) "
              f"[dim]{escape(labels)}[/]")
    for verdict in p.verdicts:
        if verdict.matched:
            out.print(f"  [green]✓ {escape(verdict.rule.name)}[/] matches"
                      f"{' (continue: true)' if verdict.rule.continue_ else ''}")
            continue
        out.print(f"  [dim]✗ {escape(verdict.rule.name)}: {escape('; '.join(why_not(p.alert, verdict)))}[/]")
    if not p.rules:
        out.print("  [yellow]no rule matches: the incident would be recorded as unmatched[/]")

    def target(step: RenderedStep) -> str:
        found = rendered_target(config, step)
        if found is None:
            return ""
        kind, name, configured = found
        return f"  [green]target {kind}.{name}[/]" if configured \
            else f"  [red]target {kind}.{name} is not configured[/]"

    incident = as_incident(p.alert)
    for rule in p.rules:
        out.print(f"\n  [bold]rule {escape(rule.rule)}[/]  [dim]group {escape(rule.group_key)}[/]")
        for error in rule.errors:
            out.print(f"    [red]! {escape(error)}[/]")
        for step in rule.collectors:
            out.print(f"    collect  {step.id}: {step.type} {escape(json.dumps(step_params(step)))}{target(step)}",
                      soft_wrap=True)
        for step, decision in zip(rule.mitigations, rule.decisions, strict=True):
            guard_says = ("[green]would run[/]" if decision.outcome == "allowed"
                          else f"[red]blocked by {decision.guard}[/]: {escape(decision.reason)}")
            out.print(f"    mitigate {step.id}: {step.type} {escape(json.dumps(step_params(step)))}{target(step)}",
                      soft_wrap=True)
            assert isinstance(step.spec, MitigationSpec)
            if step.spec.requires_approval:
                out.print("             needs approval in Slack before it runs")
            for text, state in conditions_now(step.spec.when, incident):
                out.print(f"             when {escape(text)}: {escape(state)}", soft_wrap=True)
            out.print(f"             {decision.mode}, {guard_says}"
                      f"{' ' + escape(decision.reason) if decision.outcome == 'allowed' and decision.reason else ''}",
                      soft_wrap=True)


@run_cli
def command(args: argparse.Namespace) -> int:
    import asyncio

    from responder.intake import PayloadError
    from responder.preview import preview
    from responder.replay import parse_payload

    config = config_from_args(args)
    ruleset, problems = ruleset_from_config(config)
    if problems:
        raise CliError("rules have problems:\n" + "\n".join(str(p) for p in problems))
    try:
        delivery = parse_payload(config, args.file.read_bytes(), args.source)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    except PayloadError as exc:
        raise CliError(f"{args.file}: {exc}") from None

    async def run() -> list[AlertPreview]:
        async with cli_store(args, config) as store:
            return [await preview(config, ruleset, store, alert) for alert in delivery.alerts]

    for item in asyncio.run(run()):
        show(item, config)
    return 0
