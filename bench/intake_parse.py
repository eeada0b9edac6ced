"""CPU per Alertmanager delivery on the event loop before the durable write: parsing and validating the
body (`AlertmanagerIntake.parse`), the edge limits (`check_delivery`) and placing each alert
(`RuleGrouping.place`), without HTTP or a store.

    .venv/bin/python bench/intake_parse.py [--alerts 1,50] [--seconds 2] [--runs 3]

Each delivery is shaped as Alertmanager sends one: ten labels, three annotations, group labels and a
receiver. Each step runs back to back on the same body for about `--seconds` of CPU; prints the median over
`--runs` of µs of this process's CPU (`time.process_time`) per delivery for each step and their sum.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from responder.config import IntakeConfig, IntakeLimits
from responder.intake.alertmanager import AlertmanagerIntake
from responder.intake.limits import check_delivery
from responder.rules.engine import RuleSet
from responder.rules.grouping import RuleGrouping


def body(alerts: int) -> bytes:
    group = {"alertname": "KubePodCrashLooping", "namespace": "payments"}
    return json.dumps({
        "version": "4", "status": "firing", "receiver": "responder", "groupKey": '{}:{alertname="KubePodCrashLooping"}',
        "truncatedAlerts": 0, "groupLabels": group, "commonLabels": group, "commonAnnotations": {},
        "externalURL": "http://alertmanager.monitoring:9093",
        "alerts": [{
            "status": "firing",
            "labels": {**group, "severity": "warning", "pod": f"api-7d9f8b6c5d-{i:05d}", "container": "api",
                       "instance": f"10.0.{i // 250}.{i % 250}:8080", "job": "kube-state-metrics",
                       "prometheus": "monitoring/k8s", "cluster": "prod-eu-1", "service": "payments-api"},
            "annotations": {"summary": f"Pod payments/api-7d9f8b6c5d-{i:05d} is crash looping",
                            "description": "Pod is in waiting state (reason: \"CrashLoopBackOff\").\nRestarts: 12",
                            "runbook_url": "https://runbooks.example.com/kubernetes/kubepodcrashlooping"},
            "startsAt": "2026-11-23T08:00:00.123456789Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.monitoring:9090/graph?g0.expr=rate%28kube_pod_restarts%5B5m%5D%29",
            "fingerprint": f"{i:016x}",
        } for i in range(alerts)],
    }).encode()


def per_call(step: Callable[[], object], seconds: float) -> float:
    """µs of CPU per call, over at least `seconds` of CPU."""
    calls, start = 0, time.process_time()
    while (spent := time.process_time() - start) < seconds:
        for _ in range(20):
            step()
        calls += 20
    return spent / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", default="1,50")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    intake = AlertmanagerIntake(IntakeConfig())
    limits = IntakeLimits()
    grouping = RuleGrouping(RuleSet([]))
    headers = {"content-type": "application/json", "user-agent": "Alertmanager/0.27.0"}
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("alerts  parse µs  check µs  place µs  total µs   (median of runs; CPU per delivery)")
    for alerts in (int(n) for n in args.alerts.split(",")):
        raw = body(alerts)
        delivery = intake.parse(raw, headers)
        steps: dict[str, Callable[[], object]] = {
            "parse": lambda raw=raw: intake.parse(raw, headers),  # type: ignore[misc]
            "check": lambda delivery=delivery: check_delivery(delivery, limits),  # type: ignore[misc]
            "place": lambda delivery=delivery: [grouping.place(a) for a in delivery.alerts],  # type: ignore[misc]
        }
        runs = {name: [per_call(step, args.seconds / 3) for _ in range(args.runs)] for name, step in steps.items()}
        medians = {name: statistics.median(values) for name, values in runs.items()}
        print(f"{alerts:6d}  {medians['parse']:8.1f}  {medians['check']:8.1f}  {medians['place']:8.1f}"
              f"  {sum(medians.values()):8.1f}")


if __name__ == "__main__":
    main()
