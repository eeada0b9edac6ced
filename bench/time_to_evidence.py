"""Time to evidence: from a webhook's 2xx to the complete bundle printed by the console sink, with
collectors of known durations (tests.support.plugins' `test.sleep`). What is left after subtracting the
slowest collector is the pipeline's own overhead (store, claim, rules, sink queue).

    .venv/bin/python bench/time_to_evidence.py [--targets sqlite,postgres] [--per-rule 40] [--rate 10]

Prints a table and writes bench/results/time_to_evidence.json. The repository must be importable by the
daemon (the script puts it on PYTHONPATH) because the collectors come from tests/support/plugins.py.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, env_with_repo, free_port, print_table, wait_ready, write_result
from bench.ingest import PG, drop_schema

# rule name -> collector durations (seconds); they run concurrently, so the slowest one bounds the bundle.
RULES: dict[str, list[float]] = {"tte50": [0.05], "tte200": [0.2], "tte1000": [1.0], "tteall": [0.05, 0.2, 1.0]}
HEAD = re.compile(r"^\[incident\.processed\] incident #\d+ (\S+)")


def rules_yaml() -> str:
    out = ["rules:"]
    for name, durations in RULES.items():
        out += [f"  - name: {name}", f"    match: ['alertname=\"{name}\"']", "    collectors:"]
        out += [f"      - {{type: test.sleep, id: s{i}, params: {{seconds: {d}}}}}" for i, d in enumerate(durations)]
    return "\n".join(out) + "\n"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


class PrintedAt:
    """Reads the daemon's stdout in a thread and notes when each incident's bundle was printed."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.times: dict[str, float] = {}
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        pending: str | None = None
        for line in proc.stdout:
            now = time.time()
            head = HEAD.match(line)
            if head:
                pending = head.group(1)
                self.times.setdefault(f"{pending}", now)
                continue
            pod = re.search(r"pod=([\w-]+)", line)
            if pending and pod:
                self.times[f"{pending}/{pod.group(1)}"] = self.times.pop(pending)
                pending = None


def post(port: int, alertname: str, pod: str) -> None:
    body = json.dumps({
        "version": "4", "status": "firing", "receiver": "bench", "groupKey": pod, "alerts": [{
            "status": "firing", "labels": {"alertname": alertname, "pod": pod},
            "startsAt": "2026-11-23T08:00:00Z", "fingerprint": f"{alertname}-{pod}"}],
    }).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/alertmanager", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200, resp.status


def run(target: str, per_rule: int, rate: float, workdir: Path) -> list[dict[str, Any]]:
    schema = None
    if target == "sqlite":
        store = f"sqlite:///{workdir / f'tte-{uuid.uuid4().hex[:6]}.db'}"
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        store = f"{PG}?schema={schema}"
    rules = workdir / "tte-rules"
    rules.mkdir(exist_ok=True)
    (rules / "tte.yaml").write_text(rules_yaml())
    config = workdir / "tte-config.yaml"
    config.write_text(
        "intakes: {alertmanager: {auth: {unauthenticated: loopback}}}\n"
        "logging: {level: warning}\n"
        f"rules: {{dirs: [{rules}]}}\n"
        "plugins: [tests.support.plugins]\n"
        "pipeline: {workers: 16}\n"
        # Every incident's collectors run: shared results (identical calls within the TTL) would be instant.
        "collectors: {cache_ttl: 0}\n"
    )
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "responder", "serve", "--config", str(config), "--store", store,
                             "--listen", f"127.0.0.1:{port}"], env=env_with_repo({"PYTHONUNBUFFERED": "1"}),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    accepted: dict[str, float] = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        printed = PrintedAt(proc)
        for name in RULES:  # warm-up, not measured: first connections, first statements prepared
            post(port, name, "warmup")
        time.sleep(2)
        for n in range(per_rule):
            for name in RULES:
                pod = f"p{n}"
                post(port, name, pod)
                accepted[f"{name}/{pod}"] = time.time()
                time.sleep(1 / rate)
        deadline = time.monotonic() + 60
        while len([k for k in accepted if k in printed.times]) < len(accepted) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if schema:
            drop_schema(schema)
    results = []
    for name, durations in RULES.items():
        keys = [k for k in accepted if k.startswith(f"{name}/")]
        totals = [(printed.times[k] - accepted[k]) * 1000 for k in keys if k in printed.times]
        overhead = [t - max(durations) * 1000 for t in totals]
        results.append({
            "target": target, "rule": name, "collectors_s": durations, "alerts": len(keys),
            "delivered": len(totals),
            "total_p50_ms": round(percentile(totals, 50), 1) if totals else None,
            "total_p99_ms": round(percentile(totals, 99), 1) if totals else None,
            "overhead_p50_ms": round(percentile(overhead, 50), 1) if overhead else None,
            "overhead_p99_ms": round(percentile(overhead, 99), 1) if overhead else None,
            "overhead_mean_ms": round(statistics.fmean(overhead), 1) if overhead else None,
        })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="sqlite,postgres")
    parser.add_argument("--per-rule", type=int, default=40, help="alerts per rule")
    parser.add_argument("--rate", type=float, default=20, help="webhooks per second")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets.split(","):
            results += run(target, args.per_rule, args.rate, Path(tmp))
    print_table(
        ["target", "collectors", "delivered", "total p50 ms", "total p99 ms", "overhead p50 ms", "overhead p99 ms"],
        [[r["target"], "+".join(f"{d * 1000:g}ms" for d in r["collectors_s"]), f"{r['delivered']}/{r['alerts']}",
          r["total_p50_ms"], r["total_p99_ms"], r["overhead_p50_ms"], r["overhead_p99_ms"]] for r in results],
    )
    path = write_result("time_to_evidence", {"rate_per_s": args.rate, "runs": results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
