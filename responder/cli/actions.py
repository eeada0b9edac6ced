"""`responder actions list`: the mitigation audit, newest first: what was done, what would have been,
what was refused by which guard and why."""

from __future__ import annotations

import argparse
import json
from typing import Any

from responder.cli._common import add_audit_list, cli_store, fitted, fold_table, out, run_cli


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_audit_list(subparsers, "actions", "inspect the mitigation audit", "action decisions", list_command)


@run_cli
def list_command(args: argparse.Namespace) -> int:
    import asyncio

    from rich.markup import escape

    from responder.sinks.render import ts
    from responder.store.actions import ActionStore
    from responder.views import decision_row

    async def fetch() -> list[dict[str, Any]]:
        async with cli_store(args) as store:
            return [decision_row(r) for r in await ActionStore(store).recent(args.incident, args.limit)]

    rows = asyncio.run(fetch())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = fold_table("id", "incident", "when", "rule", "step", "action", "target", "mode", "outcome", "guard",
                       "reason / description")
    for r in rows:
        verified = r["verification"]
        note = r["reason"] or r["description"]
        if verified is not None:
            note += f" [verify: {'recovered' if verified['recovered'] else 'NOT recovered'}]"
        table.add_row(str(r["id"]), str(r["incident_id"] or "-"), ts(r["created_at"]), r["rule"], r["step"],
                      r["action"], r["target"], r["mode"], r["outcome"], r["guard"] or "-", escape(note))
    out.print(fitted(table, ("reason / description",)))
    out.print(f"{len(rows)} decision(s)")
    return 0
