"""`responder clicks list`: the console audit, newest first: every press of a Slack button, who pressed it,
and what came of it (done, unchanged, declined, refused by permissions, failed)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from responder.cli._common import add_audit_list, cli_store, fitted, fold_table, out, run_cli

FIELDS = ("id", "incident_id", "button", "value", "user_id", "user_name", "channel_id", "outcome", "detail",
          "created_at", "finished_at")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_audit_list(subparsers, "clicks", "inspect the Slack console audit (button presses)", "button presses",
                   list_command)


@run_cli
def list_command(args: argparse.Namespace) -> int:
    # Imported here: `responder --help` must not load rich, pydantic or the store.
    import asyncio

    from rich.markup import escape

    from responder.sinks.render import ts
    from responder.store.console import ConsoleStore

    async def fetch() -> list[dict[str, Any]]:
        async with cli_store(args) as store:
            return [{k: r[k] for k in FIELDS} for r in await ConsoleStore(store).clicks(args.incident, args.limit)]

    rows = asyncio.run(fetch())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = fold_table("id", "incident", "when", "button", "user", "outcome", "detail")
    for r in rows:
        user = r["user_id"] + (f" ({r['user_name']})" if r["user_name"] else "")
        table.add_row(str(r["id"]), str(r["incident_id"] or "-"), ts(r["created_at"]), r["button"], user,
                      r["outcome"], escape(r["detail"] or ""))
    out.print(fitted(table, ("detail",)))
    out.print(f"{len(rows)} press(es)")
    return 0
