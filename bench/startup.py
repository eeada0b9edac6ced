"""Start-up cost: time from `responder serve` being started to /readyz answering 200, and the idle
daemon's resident memory, on SQLite and PostgreSQL.

    .venv/bin/python bench/startup.py [--runs 5] [--targets sqlite,postgres] [--loop asyncio|uvloop]

The daemon runs with the benchmark config of bench/ingest.py (no rules, console sink off). The first start
creates and migrates the store; --runs more starts on that store (a restart) give the median and the worst.
Ready is polled every 10 ms; the daemon's CPU time (user + system) is read when it is ready, a measure that
survives a busy machine better than the wall time; RSS (VmRSS) is read after the daemon has been idle for
--idle seconds. Writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_seconds, free_port, print_table, write_result
from bench.ingest import drop_schema, start_server, stop_server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_to_ready(url: str, started: float, proc: Any, timeout: float = 30) -> float:
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def one_run(target: str, workdir: Path, idle: float, loop: str, store_name: str) -> dict[str, float]:
    port = free_port()
    started = time.monotonic()
    proc, _ = start_server(target, port, workdir, loop=loop, store_name=store_name)
    try:
        ready_s = time_to_ready(f"http://127.0.0.1:{port}/readyz", started, proc)
        cpu_s = cpu_seconds(proc.pid)
        time.sleep(idle)
        return {"ready_s": ready_s, "cpu_s": cpu_s, "rss_mb": rss_mb(proc.pid)}
    finally:
        stop_server(proc, None)


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    ready = [r["ready_s"] for r in runs]
    rss = [r["rss_mb"] for r in runs]
    cpu = [r["cpu_s"] for r in runs]
    return {"runs": runs, "ready_s_median": round(statistics.median(ready), 3), "ready_s_max": round(max(ready), 3),
            "cpu_s_median": round(statistics.median(cpu), 3),
            "rss_mb_median": round(statistics.median(rss), 1), "rss_mb_max": round(max(rss), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--targets", default="sqlite,postgres")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before reading RSS")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--name", default="startup", help="results file name, bench/results/NAME.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets.split(","):
            # The first start creates and migrates the store; the others start on it as a restart would.
            name = uuid.uuid4().hex[:8]
            try:
                first = one_run(target, Path(tmp), args.idle, args.loop, name)
                again = [one_run(target, Path(tmp), args.idle, args.loop, name) for _ in range(args.runs)]
            finally:
                if target == "postgres":
                    drop_schema(f"bench_{name}")
            results.append({"target": target, "first_start": first, **summary(again)})
    print_table(["target", "first start s (migrates)", "ready s (median)", "ready s (max)", "CPU s to ready (median)",
                 "idle RSS MB (median)", "idle RSS MB (max)"],
                [[r["target"], round(r["first_start"]["ready_s"], 3), r["ready_s_median"], r["ready_s_max"],
                  r["cpu_s_median"], r["rss_mb_median"], r["rss_mb_max"]] for r in results])
    path = write_result(args.name, {"loop": args.loop, "idle_s": args.idle, "results": results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
