"""`responder incidents list|show|resolve`: what the responder has seen, one incident in full (what Slack
shows, without Slack), and closing one by hand."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from responder.cli._common import (
    CliError,
    add_config_args,
    cli_store,
    config_from_args,
    fitted,
    fold_table,
    out,
    run_cli,
)

if TYPE_CHECKING:
    from responder.models import Incident
    from responder.views import IncidentView


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("incidents", help="inspect incidents")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list incidents, newest first")
    add_config_args(listing, store=True)
    listing.add_argument("--status", choices=["open", "resolved"])
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=list_command)
    show = actions.add_parser("show", help="one incident: evidence, decisions, checklist, Slack state, timeline")
    show.add_argument("id", type=int)
    add_config_args(show, rules=True, store=True)
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.add_argument("--full", action="store_true", help="evidence text uncut")
    show.set_defaults(func=show_command)
    resolve = actions.add_parser("resolve", help="close an open incident by hand (recorded with who and why)")
    resolve.add_argument("id", type=int)
    add_config_args(resolve, store=True)
    resolve.add_argument("--reason", required=True, help="why it is closed; kept with the incident")
    resolve.add_argument("--by", metavar="NAME", help="who closes it (default: $USER)")
    resolve.set_defaults(func=resolve_command)


def incident_row(incident: Incident) -> dict[str, object]:
    return {
        "id": incident.id,
        "fingerprint": incident.fingerprint,
        "alertname": incident.alertname,
        "rule": incident.rule,
        "status": incident.status.value,
        "source": incident.source,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "deliveries": incident.deliveries,
        "group_key": incident.group_key,
        "members_firing": incident.members_firing,
        "members_total": incident.members_total,
        "previous_id": incident.previous_id,
    }


@run_cli
def list_command(args: argparse.Namespace) -> int:
    import asyncio

    from responder.sinks.render import ts

    async def fetch() -> list[Incident]:
        async with cli_store(args) as store:
            return await store.list_incidents(args.status, args.limit)

    incidents = asyncio.run(fetch())
    if args.json:
        print(json.dumps([incident_row(i) for i in incidents], indent=2))
        return 0
    table = fold_table("id", "alert", "rule", "status", "alerts (firing/all)", "group", "opened", "resolved",
                       "deliveries")
    for i in incidents:
        table.add_row(str(i.id), i.alertname, i.rule or "-", i.status.value, f"{i.members_firing}/{i.members_total}",
                      i.group_key, ts(i.opened_at), ts(i.resolved_at), str(i.deliveries))
    out.print(fitted(table))
    out.print(f"{len(incidents)} incident(s)")
    return 0


@run_cli
def show_command(args: argparse.Namespace) -> int:
    import asyncio

    from responder.cli._common import ruleset_from_config
    from responder.config import secret_values
    from responder.redaction import Redactor
    from responder.views import load_incident_view

    config = config_from_args(args)
    ruleset, _problems = ruleset_from_config(config)  # for the checklists; rule problems are check's business

    async def fetch() -> IncidentView | None:
        async with cli_store(args, config) as store:
            return await load_incident_view(store, args.id, Redactor(secret_values(config), config.redact),
                                            ruleset=ruleset)

    view = asyncio.run(fetch())
    if view is None:
        raise CliError(f"no incident with id {args.id}")
    if args.json:
        print(json.dumps(view.as_json(), indent=2, default=str))
    else:
        show_view(view, full=args.full)
    return 0


def show_view(view: IncidentView, *, full: bool) -> None:
    from rich.markup import escape

    from responder.sinks.render import STATUS_MARK, ts

    i = view.incident
    resolved = f", resolved {ts(i.resolved_at)}" if i.resolved_at else ""
    out.print(f"[bold]incident #{i.id} {escape(i.alertname or '(no alertname)')}[/] — {i.status.value}"
              f"{escape(resolved)}")
    out.print(f"  source {i.source}, fingerprint {escape(i.fingerprint)}, {i.deliveries} deliveries,"
              f" opened {ts(i.opened_at)}, started {ts(i.starts_at)}", soft_wrap=True)
    out.print(f"  rules: {escape(', '.join(view.rules) or '(none matched)')}")
    out.print(f"  group: {escape(i.group_key or '-')}, {i.members_firing} of {i.members_total} alert(s) firing",
              soft_wrap=True)
    out.print(f"  labels: {escape(', '.join(f'{k}={v}' for k, v in sorted(i.labels.items())))}", soft_wrap=True)
    for other in view.linked:
        relation = "follows" if other["relation"] == "previous" else "followed by"
        out.print(f"  {relation} incident #{other['id']} ({other['status']}, {other['members_total']} alert(s))")
    for key, value in sorted(i.annotations.items()):
        out.print(f"  {escape(key)}: {escape(value)}", soft_wrap=True)
    if i.extra.get("resolved_by"):
        out.print(f"  resolved by hand by {escape(str(i.extra['resolved_by']))}:"
                  f" {escape(str(i.extra.get('resolution', '')))}", soft_wrap=True)
    if i.error:
        out.print(f"  [red]error: {escape(i.error)}[/]", soft_wrap=True)
    out.print(f"\n[bold]members[/] ({len(view.members)})")
    shown = view.members if full else view.members[:20]
    for m in shown:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(m["labels"].items()) if k != "alertname")
        out.print(f"  {'✓' if m['status'] == 'resolved' else '●'} {escape(m['alertname'] or '-')} {m['status']}"
                  f" [dim]{escape(labels)}[/]", soft_wrap=True)
    if len(view.members) > len(shown):
        out.print(f"  [dim]… {len(view.members) - len(shown)} more: --full[/]")
    out.print(f"\n[bold]evidence[/] ({len(view.evidence)})")
    for ev in view.evidence:
        mark = STATUS_MARK.get(ev["status"], "?")
        out.print(f"  {mark} {escape(ev['step'])}: {escape(ev['title'])} [dim]({ev['collector']}, {ev['status']},"
                  f" {ev['duration_ms']:.0f} ms{', shared' if ev['shared'] else ''})[/]", soft_wrap=True)
        text = (ev["full_text"] or ev["text"]) if full else ev["text"]
        lines = text.splitlines()
        for line in lines if full else lines[:20]:
            out.print(f"      {escape(line)}", soft_wrap=True, highlight=False)
        if not full and len(lines) > 20:
            out.print(f"      [dim]… {len(lines) - 20} more line(s): --full[/]")
    out.print(f"\n[bold]decisions[/] ({len(view.decisions)})")
    for d in view.decisions:
        guard = f" [dim]guard {d['guard']}[/]" if d["guard"] else ""
        out.print(f"  → {escape(d['step'])}: {escape(d['action'])} on {escape(d['target'])}, {d['mode']}:"
                  f" [bold]{d['outcome']}[/]{guard}", soft_wrap=True)
        out.print(f"      {escape(d['reason'] or d['description'])}", soft_wrap=True)
        if d["verification"] is not None:
            out.print(f"      verification: {'recovered' if d['verification'].get('recovered') else 'NOT recovered'}")
    for rule, items in view.checklists:
        out.print(f"\n[bold]checklist[/] ({escape(rule)})")
        for item in items:
            out.print(f"  [ ] {escape(item)}", soft_wrap=True)
    out.print("\n[bold]slack[/]")
    if view.slack is None:
        out.print("  no thread")
    else:
        out.print(f"  thread in {escape(str(view.slack['channel']))} ts {view.slack['ts'] or '(not posted yet)'}"
                  f"{'  ' + view.slack['url'] if view.slack.get('url') else ''}", soft_wrap=True)
    states: dict[str, int] = {}
    for job in view.deliveries:
        key = f"{job['queue']} {job['status']}"
        states[key] = states.get(key, 0) + 1
    if states:
        out.print("  deliveries: " + ", ".join(f"{n} {k}" for k, n in sorted(states.items())))
    for job in view.deliveries:
        if job["status"] not in ("done", "queued", "running"):
            out.print(f"  [red]{job['queue']} {job['kind']}: {job['status']} after {job['attempts']} attempt(s):"
                      f" {escape(str(job['last_error'] or ''))}[/]",
                      soft_wrap=True)
    out.print("\n[bold]timeline[/]")
    for event in view.timeline():
        out.print(f"  {ts(event.at)}  {escape(event.what)}", soft_wrap=True)


@run_cli
def resolve_command(args: argparse.Namespace) -> int:
    import asyncio
    import getpass

    actor = args.by or getpass.getuser()

    async def close() -> tuple[Incident | None, Incident | None]:
        async with cli_store(args) as store:
            return await store.resolve_by_hand(args.id, actor, args.reason), await store.get_incident(args.id)

    closed, current = asyncio.run(close())
    if closed is None:
        raise CliError(f"no incident with id {args.id}" if current is None
                       else f"incident #{args.id} is already {current.status.value}")
    out.print(f"incident #{closed.id} {closed.alertname} resolved by {actor}: {args.reason}", soft_wrap=True,
              markup=False)
    return 0
