"""`responder replay FILE | --alert ID`: run a saved payload through the whole pipeline, in-process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from responder.cli._common import (
    CliError,
    add_config_args,
    cli_store,
    config_from_args,
    fitted,
    fold_table,
    out,
    ruleset_from_config,
    run_cli,
)

if TYPE_CHECKING:
    from responder.config import Config
    from responder.evidence import Evidence
    from responder.replay import ReplayResult
    from responder.rules.engine import RuleSet


IGNORED_AGE = "36500d"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay", help="run a saved alert through the pipeline (collectors for real, mitigations in dry-run)")
    parser.add_argument("file", nargs="?", type=Path, help="a saved webhook payload (JSON)")
    parser.add_argument("--alert", type=int, metavar="ID", help="a stored alert (see `responder alerts list`)")
    add_config_args(parser, rules=True)
    parser.add_argument("--source", choices=["alertmanager", "grafana", "pagerduty"], help="payload kind")
    parser.add_argument("--rule", metavar="NAME", help="run this rule whatever the matchers say")
    parser.add_argument("--enforce", action="store_true",
                        help="let mitigations act; needs --record, so the live store's guards and audit apply")
    parser.add_argument("--post", action="store_true", help="also send the bundle to the configured sinks")
    parser.add_argument("--record", action="store_true",
                        help="replay into the configured store instead of a throwaway one")
    parser.add_argument("--ignore-age", action="store_true",
                        help="judge an old alert as if it had just fired (mitigations.max_alert_age is not applied)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=command)


def force_rule(ruleset: RuleSet, name: str) -> RuleSet:
    from responder.rules.engine import RuleSet

    rule = next((r for r in ruleset.rules if r.name == name), None)
    if rule is None:
        raise CliError(f"no rule named {name!r} (known: {', '.join(r.name for r in ruleset.rules)})")
    return RuleSet([rule], default_rule=name)


async def load_stored_alert(args: argparse.Namespace, config: Config, alert_id: int) -> tuple[bytes, str, str, float]:
    async with cli_store(args, config) as store:
        row = await store.get_alert(alert_id)
    if row is None:
        raise CliError(f"no stored alert with id {alert_id}")
    return bytes(row["payload_body"]), row["source"], row["fingerprint"], float(row["starts_at"])


def show_progress(evidence: Evidence) -> None:
    from rich.markup import escape

    from responder.sinks.render import STATUS_MARK

    mark = STATUS_MARK.get(evidence.status.value, "?")
    out.print(f"  {mark} {escape(evidence.step)}: {escape(evidence.title)}"
              f" [dim]({evidence.status.value}, {evidence.duration_ms:.0f} ms)[/]", soft_wrap=True)


def show_result(result: ReplayResult) -> None:
    from rich.markup import escape
    from rich.panel import Panel

    from responder.sinks.render import STATUS_MARK

    incident = result.incident
    out.print(f"\n[bold]{escape(incident.alertname)}[/] → rule [bold]{escape(incident.rule or '(none matched)')}[/]"
              f"  [dim]{escape(', '.join(f'{k}={v}' for k, v in sorted(incident.labels.items())))}[/]")
    out.print(f"group [bold]{escape(incident.group_key)}[/]: {incident.members_total} alert(s),"
              f" incident #{incident.id}")
    if incident.error:
        out.print(f"[red]step errors:[/] {escape(incident.error)}")
    for row in result.evidence:
        title = (f"{STATUS_MARK.get(row['status'], '?')} {row['step']}: {row['title']}"
                 f" ({row['status']}, {row['duration_ms']:.0f} ms)")
        out.print(Panel(escape(row["text"] or "(no text)"), title=escape(title), title_align="left"))
    if result.actions:
        table = fold_table("step", "action", "target", "mode", "outcome", "why")
        table.title = "mitigations"
        for row in result.actions:
            table.add_row(row["step"], row["action"], row["target"], row["mode"], row["outcome"],
                          escape(row["reason"] or ""))
        out.print(fitted(table, ("why",)))


@run_cli
def command(args: argparse.Namespace) -> int:
    import asyncio

    from responder.intake import PayloadError
    from responder.plugins import UnknownPlugin
    from responder.replay import EnforceRefused, only_alert, parse_payload, replaying, result_json, run_replay

    if (args.file is None) == (args.alert is None):
        raise CliError("give a payload FILE or --alert ID (one of them)")
    if args.ignore_age and args.enforce:
        # Lifting a guard is for looking; acting on an old alert is what the age guard exists to stop.
        raise CliError("--ignore-age lifts a guard, so it cannot be combined with --enforce")
    # A replayed alert is usually an old one: --ignore-age lets the guards judge everything but its age.
    config = config_from_args(args, **({"mitigations.max_alert_age": IGNORED_AGE} if args.ignore_age else {}))
    ruleset, problems = ruleset_from_config(config)
    if problems:
        raise CliError("rules have problems:\n" + "\n".join(str(p) for p in problems))
    if args.rule:
        ruleset = force_rule(ruleset, args.rule)

    async def run() -> list[ReplayResult]:
        if args.alert is not None:
            body, source, fingerprint, starts_at = await load_stored_alert(args, config, args.alert)
        else:
            try:
                body = args.file.read_bytes()
            except OSError as exc:
                raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
            source, fingerprint, starts_at = args.source, None, None
        try:
            delivery = parse_payload(config, body, source)
        except (PayloadError, UnknownPlugin) as exc:
            raise CliError(f"{args.file or f'alert {args.alert}'}: {exc}") from None
        if fingerprint is not None and starts_at is not None:
            delivery = only_alert(delivery, fingerprint, starts_at)
        if not delivery.alerts:
            raise CliError("the payload holds no alerts to replay")
        if not args.json:
            out.print(f"replaying {len(delivery.alerts)} {delivery.source} alert(s)"
                      f"{' [bold red]with enforcement[/]' if args.enforce else ' (mitigations in dry-run)'}")
        async with replaying(config, ruleset, enforce=args.enforce, post=args.post,
                             store_url=config.store_url() if args.record else None,
                             on_evidence=None if args.json else show_progress) as daemon:
            return await run_replay(daemon, delivery, timeout=config.pipeline.job_timeout + 30)

    try:
        results = asyncio.run(run())
    except TimeoutError:
        raise CliError("the replay did not finish within the job timeout") from None
    except EnforceRefused as exc:
        raise CliError(str(exc)) from None
    if args.json:
        json.dump([result_json(r) for r in results], sys.stdout, indent=2)
        print()
        return 0
    for result in results:
        show_result(result)
    return 0


