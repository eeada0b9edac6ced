"""Profile the ingest path: the daemon under the same wrk load as bench/ingest.py, sampled by py-spy.

    .venv/bin/python bench/profile_ingest.py [--target sqlite|postgres] [--workload storm|distinct] [--alerts 1]
        [--duration 10] [--loop asyncio|uvloop]

Needs py-spy (`pip install py-spy`; sampling another process needs root or ptrace permission). Writes
the collapsed stacks and a flame graph to bench/results/, prints the functions with the most samples
(inclusive: the function or anything it calls; self: the function's own code) on the event loop's thread,
how busy the other threads were (aiosqlite's), and writes
bench/results/profile-<target>-<alerts>.json.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, RESULTS, free_port, print_table, wait_ready, write_result
from bench.ingest import run_wrk, start_server, stop_server


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def frame_name(frame: str) -> str:
    """`handle (responder/server.py:57)` -> `responder/server.py:handle`, without the line number."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path.removeprefix(str(REPO) + '/')}:{name}"


def summarize(collapsed: Path, top: int) -> dict[str, Any]:
    """Shares of the event loop's thread (the daemon's Python work), and how busy the other threads were
    (aiosqlite runs each statement on a thread of its own)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = idle = 0
    threads: collections.Counter[str] = collections.Counter()
    threads_busy: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        if frames[0].endswith("Thread._bootstrap"):
            # Another thread: idle while blocked in its run function's own wait (a queue get in C).
            run = frames[3] if len(frames) > 3 else frames[-1]
            threads[run] += count
            if len(frames) > 4:
                threads_busy[run] += count
            continue
        total += count
        # Frames below run_forever that end in the selector are the loop waiting for I/O.
        if frames[-1].endswith(("select", "selectors.py:select", ":poll", ":epoll")):
            idle += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "samples": total,
        "idle_share": round(idle / total, 3) if total else None,
        "inclusive": [(n, round(c / total, 3)) for n, c in inclusive.most_common(top)],
        "self": [(n, round(c / total, 3)) for n, c in own.most_common(top)],
        "threads_busy": {n: round(threads_busy[n] / c, 3) for n, c in threads.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="postgres", choices=["sqlite", "postgres"])
    parser.add_argument("--workload", default="storm", choices=["storm", "distinct"])
    parser.add_argument("--alerts", type=int, default=1)
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    name = f"profile-{args.target}-{args.workload}-{args.alerts}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    collapsed = RESULTS / f"{name}.txt"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc, schema = start_server(args.target, port, Path(tmp), loop=args.loop)
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            spy = subprocess.Popen([py_spy(), "record", "--pid", str(proc.pid), "--rate", "250", "--idle",
                                    "--duration", str(args.duration), "--format", "raw", "--output", str(collapsed)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load = run_wrk(port, workload=args.workload, alerts=args.alerts, duration=args.duration,
                           connections=args.connections)
            spy.wait(timeout=args.duration + 60)
        finally:
            stop_server(proc, schema)
    summary = summarize(collapsed, args.top)
    print(f"{args.target}, {args.workload}, {args.alerts} alert(s)/request: {load['requests_per_s']:.0f} req/s"
          f" under the profiler, {summary['samples']} samples, event loop idle {summary['idle_share']:.0%}\n")
    print_table(["inclusive share", "function"], [[f"{s:.1%}", n] for n, s in summary["inclusive"]])
    print()
    print_table(["self share", "function"], [[f"{s:.1%}", n] for n, s in summary["self"]])
    for thread, busy in summary["threads_busy"].items():
        print(f"thread {thread}: busy {busy:.0%} of its samples")
    path = write_result(name, {"target": args.target, "workload": args.workload, "alerts_per_request": args.alerts,
                               "loop": args.loop, "load": load, **summary})
    print(f"results: {path}, stacks: {collapsed}")


if __name__ == "__main__":
    main()
