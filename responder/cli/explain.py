"""`responder explain FILE`: which rule an alert would match and why, and what would run. Runs nothing."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from rich.markup import escape

from responder.cli._common import CliError, add_config_args, config_from_args, out, ruleset_from_config, run_cli
from responder.intake import PayloadError
from responder.preview import AlertPreview, preview, step_params, why_not
from responder.replay import parse_payload
from responder.store import StoreUnavailable, open_store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("explain", help="show which rule a payload matches and what would run")
    parser.add_argument("file", type=Path, help="a saved webhook payload (JSON)")
    add_config_args(parser, rules=True)
    parser.add_argument("--source", choices=["alertmanager", "grafana", "pagerduty"], help="payload kind")
    parser.set_defaults(func=command)


def show(p: AlertPreview) -> None:
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
    for rule in p.rules:
        out.print(f"\n  [bold]rule {escape(rule.rule)}[/]  [dim]group {escape(rule.group_key)}[/]")
        for error in rule.errors:
            out.print(f"    [red]! {escape(error)}[/]")
        for step in rule.collectors:
            out.print(f"    collect  {step.id}: {step.type} {escape(json.dumps(step_params(step)))}")
        for step, decision in zip(rule.mitigations, rule.decisions, strict=True):
            guard_says = ("[green]would run[/]" if decision.outcome == "allowed"
                          else f"[red]blocked by {decision.guard}[/]: {escape(decision.reason)}")
            out.print(f"    mitigate {step.id}: {step.type} {escape(json.dumps(step_params(step)))}")
            out.print(f"             {decision.mode}, {guard_says}"
                      f"{' ' + escape(decision.reason) if decision.outcome == 'allowed' and decision.reason else ''}")


@run_cli
def command(args: argparse.Namespace) -> int:
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
        try:
            store = await open_store(config.store_url(), pool_size=2, timeout=config.store.connect_timeout)
        except (StoreUnavailable, OSError) as exc:
            raise CliError(f"cannot open the store to read cooldowns and budgets: {exc}") from None
        try:
            return [await preview(config, ruleset, store, alert) for alert in delivery.alerts]
        finally:
            await store.close()

    for item in asyncio.run(run()):
        show(item)
    return 0
