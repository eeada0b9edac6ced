"""`responder alerts list|export`: get saved alerts and their raw payloads out of the store."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from responder.cli._common import (
    CliError,
    add_config_args,
    cli_store,
    fitted,
    fold_table,
    out,
    run_cli,
)

if TYPE_CHECKING:
    from responder.store.db import Row


ALERT_FIELDS = ("id", "payload_id", "incident_id", "source", "alertname", "status", "fingerprint", "starts_at",
                "received_at")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("alerts", help="list stored alerts, export their raw payloads")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="stored alerts, newest first")
    add_config_args(listing, store=True)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=list_command)
    export = actions.add_parser("export", help="print the raw payload an alert arrived in (for replay)")
    export.add_argument("id", type=int)
    add_config_args(export, store=True)
    export.set_defaults(func=export_command)


@run_cli
def list_command(args: argparse.Namespace) -> int:
    import asyncio

    from responder.sinks.render import ts

    async def fetch() -> list[Row]:
        async with cli_store(args) as store:
            return await store.list_alerts(args.limit)

    rows = asyncio.run(fetch())
    if args.json:
        print(json.dumps([{k: row[k] for k in ALERT_FIELDS} for row in rows], indent=2))
        return 0
    table = fold_table("id", "source", "alert", "status", "incident", "received", "fingerprint")
    for row in rows:
        table.add_row(str(row["id"]), row["source"], row["alertname"], row["status"], str(row["incident_id"] or "-"),
                      ts(row["received_at"]), row["fingerprint"])
    out.print(fitted(table))
    out.print(f"{len(rows)} alert(s)")
    return 0


@run_cli
def export_command(args: argparse.Namespace) -> int:
    import asyncio

    async def fetch() -> Row | None:
        async with cli_store(args) as store:
            return await store.get_alert(args.id)

    row = asyncio.run(fetch())
    if row is None:
        raise CliError(f"no stored alert with id {args.id}")
    sys.stdout.buffer.write(bytes(row["payload_body"]))
    sys.stdout.buffer.write(b"\n")
    return 0
