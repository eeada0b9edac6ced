"""Prometheus metrics. Names are a contract: dashboards and alerts depend on them.

Each daemon gets its own CollectorRegistry so tests and in-process replays never share counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


def labelled(metric: M) -> Callable[..., M]:
    """`metric.labels(...)` remembered per label values: on the webhook path a lookup per request adds up
    (prometheus-client takes a lock and builds the key each time). For labels with few values only."""
    children: dict[tuple[str, ...], M] = {}

    def child(*values: str) -> M:
        found = children.get(values)
        if found is None:
            found = children[values] = metric.labels(*values)
        return found

    return child


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhook_requests = Counter(
            "responder_webhook_requests_total", "Webhook requests by intake and HTTP status.", ["intake", "code"],
            registry=r)
        self.alerts_received = Counter(
            "responder_alerts_received_total", "Alerts accepted, by source and status.", ["source", "status"],
            registry=r)
        self.connections_closed = Counter(
            "responder_connections_closed_total", "Connections closed by the listener's guard, by reason"
            " (max_connections, header_timeout, head_too_large).", ["reason"], registry=r)
        self.rule_matches = Counter(
            "responder_rule_matches_total", "Incidents matched to a rule.", ["rule"], registry=r)
        self.unmatched = Counter(
            "responder_unmatched_alerts_total", "Incidents no rule matched.", ["source"], registry=r)
        self.incidents_opened = Counter(
            "responder_incidents_opened_total", "Incidents opened, by matched rule.", ["rule"], registry=r)
        self.incidents_resolved = Counter(
            "responder_incidents_resolved_total", "Incidents resolved, by matched rule.", ["rule"], registry=r)
        self.jobs = Counter(
            "responder_jobs_total", "Finished job attempts by outcome (done, retried, postponed, failed, lease_lost).",
            ["outcome"], registry=r)
        self.task_restarts = Counter(
            "responder_task_restarts_total", "Restarts of a long-lived task after it failed.", ["task"], registry=r)
        self.queue_depth = Gauge(
            "responder_queue_depth", "Jobs queued or running, all queues.", registry=r)
        self.pipeline_duration = Histogram(
            "responder_pipeline_duration_seconds", "Time to process one incident job.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.step_errors = Counter(
            "responder_step_errors_total", "Rule steps that could not be rendered or validated.", ["rule"],
            registry=r)
        self.collector_runs = Counter(
            "responder_collector_runs_total", "Collector runs by collector and status.", ["collector", "status"],
            registry=r)
        self.collector_duration = Histogram(
            "responder_collector_duration_seconds", "Collector run time.", ["collector"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.actions = Counter(
            "responder_actions_total", "Mitigation decisions by action, outcome and deciding guard.",
            ["action", "outcome", "guard"], registry=r)
        self.slack_calls = Counter(
            "responder_slack_calls_total", "Slack Web API calls by method and outcome (ok, ratelimited, transient,"
            " permanent).", ["method", "outcome"], registry=r)
        self.slack_clicks = Counter(
            "responder_slack_clicks_total", "Presses of the Slack console's buttons by button and outcome (done,"
            " unchanged, declined, refused, failed).", ["button", "outcome"], registry=r)
        self.slack_outbox_depth = Gauge(
            "responder_slack_outbox_depth", "Slack messages, updates and uploads not yet delivered.", registry=r)
        self.slack_oldest_pending = Gauge(
            "responder_slack_oldest_pending_seconds", "Age of the oldest Slack message not yet delivered.",
            registry=r)
