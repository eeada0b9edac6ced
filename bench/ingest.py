"""Ingest benchmark: Alertmanager webhooks with 1 or 50 alerts per request, from wrk in a separate process
(1 thread, 32 connections), against the daemon on SQLite and on PostgreSQL, and against a bare aiohttp app that
only parses the JSON, measured side by side in the same run so the ratio survives a noisy machine.

    .venv/bin/python bench/ingest.py [--workload storm,distinct] [--alerts 1] [--duration 8]
        [--targets baseline,sqlite,postgres] [--loop asyncio|uvloop] [--processes N] [--set KEY=VALUE ...]

Workloads (every request carries new alerts either way):
  storm     each delivery belongs to one of 100 Alertmanager groups: most add members to an open incident;
  distinct  each delivery is a new group: every request opens an incident.

Prints a table and writes bench/results/NAME.json (NAME from --name, default ingest).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, cpu_seconds, env_with_repo, free_port, print_table, wait_ready, write_result

PG = "postgresql://postgres@127.0.0.1:5432/test"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", output)
    result: dict[str, Any] = {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "max_ms": to_ms(latency.group(3)) if latency else None,
        "errors": 0,
    }
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.M)
        result[f"p{pct}_ms"] = to_ms(m.group(1)) if m else None
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["errors"] = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return result


def start_server(target: str, port: int, workdir: Path, *, pipeline_workers: int = 4, synchronous: str = "full",
                 loop: str = "asyncio", processes: int = 1, settings: Sequence[str] = (),
                 store_name: str | None = None) -> tuple[subprocess.Popen[bytes], str | None]:
    """The bare app, or `responder serve` on a fresh SQLite file or PostgreSQL schema (or the one named
    `store_name`, to start again on an existing store); `settings` are extra config values as dotted
    KEY=VALUE (the value is YAML). Returns the process and the PostgreSQL schema to drop."""
    if target == "baseline":
        argv = [sys.executable, str(REPO / "bench" / "baseline_app.py"), "--port", str(port), "--loop", loop]
        return subprocess.Popen(argv, env=env_with_repo(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), None
    name = store_name or uuid.uuid4().hex[:8]
    schema = None
    if target == "sqlite":
        store = f"sqlite:///{workdir / f'bench-{name}.db'}"
    else:
        schema = f"bench_{name}"
        store = f"{PG}?schema={schema}"
    rules = workdir / "rules"
    rules.mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "intakes": {"alertmanager": {"auth": {"unauthenticated": "loopback"}}},
        "sinks": {"console": {"enabled": False}},
        "logging": {"level": "warning"},
        "rules": {"dirs": [str(rules)]},
        "store": {"pool_size": 20, "sqlite_synchronous": synchronous},
        "pipeline": {"workers": pipeline_workers},
        "server": {"event_loop": loop},
    }
    for setting in settings:
        dotted, _, value = setting.partition("=")
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    path = workdir / "bench-config.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "responder", "serve", "--config", str(path), "--store", store,
            "--listen", f"127.0.0.1:{port}"]
    if processes != 1:
        argv += ["--processes", str(processes)]
    return subprocess.Popen(argv, env=env_with_repo(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL), schema


def stop_server(proc: subprocess.Popen[bytes], schema: str | None) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    if schema:
        drop_schema(schema)


def drop_schema(schema: str) -> None:
    import asyncio

    async def drop() -> None:
        conn = await asyncpg.connect(PG)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()

    asyncio.run(drop())


def process_tree(pid: int) -> list[int]:
    """The process and its children (`serve --processes N` forks N workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    if children.exists():
        for child in children.read_text().split():
            found += process_tree(int(child))
    return found


def run_wrk(port: int, *, workload: str, alerts: int, duration: int, connections: int, threads: int = 1
            ) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s",
         str(REPO / "bench" / "post_alerts.lua"), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=duration + 60,
        env=env_with_repo({"ALERTS": str(alerts), "WORKLOAD": workload}),
    ).stdout
    return parse_wrk(out)


def run(target: str, workload: str, alerts: int, duration: int, connections: int, workdir: Path, **server: Any
        ) -> dict[str, Any]:
    port = free_port()
    proc, schema = start_server(target, port, workdir, **server)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        pids = process_tree(proc.pid)
        cpu_before = sum(cpu_seconds(p) for p in pids)
        load_before = os.getloadavg()[0]
        result = run_wrk(port, workload=workload, alerts=alerts, duration=duration, connections=connections)
        # Requests answered during the run: wrk's rate times the run time (its own total is not printed).
        result["cpu_ms_per_request"] = round(
            1000 * (sum(cpu_seconds(p) for p in pids) - cpu_before)
            / max(1.0, result["requests_per_s"] * duration), 3)
        result["load_average"] = round((load_before + os.getloadavg()[0]) / 2, 2)
    finally:
        stop_server(proc, schema)
    result.update(target=target, workload=workload, alerts_per_request=alerts, loop=server.get("loop", "asyncio"),
                  processes=server.get("processes", 1), alerts_per_s=result["requests_per_s"] * alerts)
    return result


def variants(targets: str, loops: str, processes: str, baseline_loop: str) -> list[tuple[str, str, int]]:
    """(target, event loop, processes) in run order: the bare app first, then each daemon variant."""
    found = []
    for target in targets.split(","):
        if target == "baseline":
            found.append((target, baseline_loop, 1))
            continue
        for loop in loops.split(","):
            for count in map(int, processes.split(",")) if target == "postgres" else [1]:
                found.append((target, loop, count))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="storm,distinct", help="storm and/or distinct, comma-separated")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--targets", default="baseline,sqlite,postgres")
    parser.add_argument("--alerts", default="1", help="alerts per request, comma-separated (e.g. 1,50)")
    parser.add_argument("--pipeline-workers", type=int, default=4)
    parser.add_argument("--sqlite-synchronous", default="full", choices=["full", "normal"])
    parser.add_argument("--loop", default="asyncio",
                        help="the daemon's server.event_loop: asyncio and/or uvloop, comma-separated")
    parser.add_argument("--baseline-loop", default="asyncio", choices=["asyncio", "uvloop"],
                        help="the bare app's event loop (the issue's reference is plain asyncio)")
    parser.add_argument("--processes", default="1",
                        help="serve --processes for PostgreSQL, comma-separated (e.g. 1,2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value for the daemon, e.g. pipeline.intake_first_max_wait=0; repeatable")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole set this many times, interleaved")
    parser.add_argument("--name", default="ingest", help="results file name, bench/results/NAME.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for workload in args.workload.split(","):
                for alerts in map(int, args.alerts.split(",")):
                    for target, loop, processes in variants(args.targets, args.loop, args.processes,
                                                            args.baseline_loop):
                        results.append(run(target, workload, alerts, args.duration, args.connections, Path(tmp),
                                           pipeline_workers=args.pipeline_workers,
                                           synchronous=args.sqlite_synchronous, loop=loop, processes=processes,
                                           settings=args.set))
    # The ratio is to the bare app measured just before it (same workload and alerts per request).
    base = None
    for r in results:
        if r["target"] == "baseline":
            base = r["requests_per_s"]
        r["ratio_to_baseline"] = round(r["requests_per_s"] / base, 3) if base else None
    print_table(
        ["workload", "target", "loop", "procs", "alerts/req", "req/s", "alerts/s", "p50 ms", "p99 ms", "max ms",
         "errors", "x baseline", "server CPU ms/req", "load"],
        [[r["workload"], r["target"], r["loop"], r["processes"], r["alerts_per_request"],
          f"{r['requests_per_s']:.0f}", f"{r['alerts_per_s']:.0f}", r["p50_ms"], r["p99_ms"], r["max_ms"],
          r["errors"], r["ratio_to_baseline"], r["cpu_ms_per_request"], r["load_average"]]
         for r in results],
    )
    path = write_result(args.name, {"connections": args.connections, "duration_s": args.duration,
                                   "pipeline_workers": args.pipeline_workers,
                                   "sqlite_synchronous": args.sqlite_synchronous,
                                   "baseline_loop": args.baseline_loop, "settings": args.set,
                                   "runs": results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
