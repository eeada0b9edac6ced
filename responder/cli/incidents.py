"""`responder incidents list`: what the responder has seen, newest first."""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.table import Table

from responder.cli._common import CliError, add_config_args, config_from_args, out, run_cli
from responder.models import Incident
from responder.sinks.render import ts
from responder.store import Store, StoreUnavailable, open_store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("incidents", help="inspect incidents")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list incidents, newest first")
    add_config_args(listing, store=True)
    listing.add_argument("--status", choices=["open", "resolved"])
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=list_command)


async def open_cli_store(args: argparse.Namespace) -> Store:
    config = config_from_args(args)
    try:
        return await open_store(config.store_url(), synchronous=config.store.sqlite_synchronous,
                                pool_size=2, timeout=config.store.connect_timeout)
    except (StoreUnavailable, OSError) as exc:
        raise CliError(f"cannot open the store: {exc}") from None


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
    async def fetch() -> list[Incident]:
        store = await open_cli_store(args)
        try:
            return await store.list_incidents(args.status, args.limit)
        finally:
            await store.close()

    incidents = asyncio.run(fetch())
    if args.json:
        print(json.dumps([incident_row(i) for i in incidents], indent=2))
        return 0
    table = Table("id", "alert", "rule", "status", "alerts (firing/all)", "group", "opened", "resolved",
                  "deliveries")
    for i in incidents:
        table.add_row(str(i.id), i.alertname, i.rule or "-", i.status.value, f"{i.members_firing}/{i.members_total}",
                      i.group_key, ts(i.opened_at), ts(i.resolved_at), str(i.deliveries))
    out.print(table)
    out.print(f"{len(incidents)} incident(s)")
    return 0
