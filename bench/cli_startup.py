"""What a command costs before it does anything: wall time, CPU time and peak RSS of `responder --help`,
`--version`, `check` and `incidents list` on the example config, and the daemon's time to /readyz and idle
RSS with the example config and the shipped rules (the heavy client libraries are imported only for the
configured target kinds).

    .venv/bin/python bench/cli_startup.py [--runs 5] [--no-daemon]

Each command runs once first to write its bytecode (an installed package has it; this repository's tests
run with PYTHONDONTWRITEBYTECODE=1, which this script unsets for what it starts). Wall time depends on what
else the machine runs; CPU time (user + system) much less, so both are shown. Prints medians and worst runs
and writes bench/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, free_port, print_table, write_result
from bench.startup import rss_mb, time_to_ready

RESPONDER = [sys.executable, "-m", "responder"]
GNU_TIME = "/usr/bin/time"  # Debian package `time`


def command_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def timed(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """One run of a command: wall seconds, CPU seconds and peak RSS. GNU time starts it and reports its
    rusage: a child forked from this (larger) Python process would report this process's RSS as its peak."""
    with tempfile.NamedTemporaryFile("r") as report:
        started = time.monotonic()
        proc = subprocess.run([GNU_TIME, "-o", report.name, "-f", "%U %S %M", *argv], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        wall = time.monotonic() - started
        user, system, max_rss_kb = report.read().split()[-3:]
    return {"wall_s": wall, "cpu_s": float(user) + float(system), "max_rss_mb": int(max_rss_kb) / 1024,
            "exit": proc.returncode}


def commands(store: str) -> dict[str, list[str]]:
    example = ["--config", "config.example.yaml"]
    return {
        "responder --help": [*RESPONDER, "--help"],
        "responder --version": [*RESPONDER, "--version"],
        "responder check": [*RESPONDER, "check", *example],
        "responder incidents list": [*RESPONDER, "incidents", "list", *example, "--store", store],
    }


def daemon_run(workdir: Path, env: dict[str, str], idle: float) -> dict[str, float]:
    port = free_port()
    argv = [*RESPONDER, "serve", "--config", "config.example.yaml", "--listen", f"127.0.0.1:{port}",
            "--store", f"sqlite:///{workdir / 'daemon.db'}"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = time_to_ready(f"http://127.0.0.1:{port}/readyz", started, proc)
        time.sleep(idle)
        return {"wall_s": ready, "rss_mb": rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def summary(name: str, runs: list[dict[str, float]], keys: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"what": name, "runs": runs}
    for key in keys:
        values = [r[key] for r in runs]
        row[f"{key}_median"] = round(statistics.median(values), 3)
        row[f"{key}_max"] = round(max(values), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds the daemon idles before RSS is read")
    parser.add_argument("--no-daemon", action="store_true", help="only the commands")
    args = parser.parse_args()
    env = command_env()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'cli.db'}"
        for name, argv in commands(store).items():
            timed(argv, env)  # writes the bytecode; not counted
            runs = [timed(argv, env) for _ in range(args.runs)]
            rows.append(summary(name, runs, ["wall_s", "cpu_s", "max_rss_mb"]))
        if not args.no_daemon:
            daemon = [daemon_run(Path(tmp), env, args.idle) for _ in range(args.runs)]
            rows.append(summary("responder serve (ready, idle RSS)", daemon, ["wall_s", "rss_mb"]))
    print_table(["what", "wall s (median)", "wall s (max)", "CPU s (median)", "RSS MB (median)"],
                [[r["what"], r["wall_s_median"], r["wall_s_max"], r.get("cpu_s_median", "-"),
                  r.get("max_rss_mb_median", r.get("rss_mb_median"))] for r in rows])
    print(f"load average after the run: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    path = write_result("cli_startup", {"runs": args.runs, "results": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
