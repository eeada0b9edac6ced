"""Kubernetes collectors: what `kubectl get pods`, `describe`, `get events`, `logs`, `rollout history`,
`get nodes` and `top pods` show, read through the API with the target's credentials."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from responder.collectors.base import Collector, CollectorContext, Finding, registry
from responder.collectors.common import TargetParams, age_seconds, human_seconds, iso, table
from responder.config import Duration
from responder.evidence import EvidenceStatus
from responder.params import K8sName, K8sNamespace, LabelSelector

REQUEST_TIMEOUT = 10
REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"


def given(**options: Any) -> dict[str, Any]:
    """Keyword arguments for an API call without the empty ones (the client rejects None)."""
    return {k: v for k, v in options.items() if v not in (None, "")} | {"_request_timeout": REQUEST_TIMEOUT}


class NamespacedParams(TargetParams):
    namespace: K8sNamespace


class SelectorParams(NamespacedParams):
    # `app=api`; empty selects every pod in the namespace.
    selector: LabelSelector = ""
    max_pods: int = Field(default=50, ge=1, le=500)


def _container_row(pod: str, spec_image: str | None, status: Any) -> dict[str, Any]:
    state, last = status.state, status.last_state
    waiting = state.waiting if state is not None else None
    terminated = last.terminated if last is not None else None
    current = state.terminated if state is not None else None
    return {
        "pod": pod,
        "container": status.name,
        "image": status.image or spec_image,
        "ready": bool(status.ready),
        "restarts": int(status.restart_count or 0),
        "state": ("waiting" if waiting else "terminated" if current
                  else "running" if state is not None and state.running else "unknown"),
        "waiting_reason": waiting.reason if waiting else None,
        "last_termination_reason": terminated.reason if terminated else current.reason if current else None,
        "last_exit_code": terminated.exit_code if terminated else current.exit_code if current else None,
    }


def pod_summary(pod: Any) -> dict[str, Any]:
    images = {c.name: c.image for c in (pod.spec.containers if pod.spec else [])}
    statuses = (pod.status.container_statuses or []) if pod.status else []
    containers = [_container_row(pod.metadata.name, images.get(s.name), s) for s in statuses]
    ready = bool(containers) and all(c["ready"] for c in containers)
    waiting = next((c["waiting_reason"] for c in containers if c["waiting_reason"]), None)
    terminated = next((c["last_termination_reason"] for c in containers if c["last_termination_reason"]), None)
    exit_code = next((c["last_exit_code"] for c in containers if c["last_exit_code"] is not None), None)
    return {
        "name": pod.metadata.name,
        "phase": pod.status.phase if pod.status else None,
        "ready": ready,
        "ready_containers": f"{sum(c['ready'] for c in containers)}/{len(containers) or len(images)}",
        "restarts": sum(c["restarts"] for c in containers),
        "waiting_reason": waiting,
        "last_termination_reason": terminated,
        "last_exit_code": exit_code,
        "node": pod.spec.node_name if pod.spec else None,
        "image": ", ".join(sorted({c["image"] for c in containers if c["image"]} or set(images.values()))),
        "age_seconds": age_seconds(pod.metadata.creation_timestamp),
        "containers": containers,
    }


@registry.register
class Pods(Collector[SelectorParams]):
    """`kubectl get pods -l …` plus the parts of `describe` that explain a restart."""

    name = "kubernetes.pods"
    params_model = SelectorParams

    async def collect(self, params: SelectorParams, ctx: CollectorContext) -> Finding:
        from kubernetes_asyncio import client as k8s

        core = k8s.CoreV1Api(await ctx.targets.kubernetes(params.target))
        found = await core.list_namespaced_pod(params.namespace,
                                               **given(label_selector=params.selector, limit=params.max_pods))
        pods = [pod_summary(p) for p in found.items]
        reasons = Counter(r for p in pods for c in p["containers"]
                          for r in (c["waiting_reason"], c["last_termination_reason"]) if r)
        payload = {
            "namespace": params.namespace,
            "selector": params.selector,
            "pod_count": len(pods),
            "ready_count": sum(p["ready"] for p in pods),
            "not_ready_count": sum(not p["ready"] for p in pods),
            "total_restarts": sum(p["restarts"] for p in pods),
            "max_restarts": max((p["restarts"] for p in pods), default=0),
            "reasons": dict(reasons),
            "oomkilled_count": sum(any(c["last_termination_reason"] == "OOMKilled" for c in p["containers"])
                                   for p in pods),
            "crashloop_count": sum(p["waiting_reason"] == "CrashLoopBackOff" for p in pods),
            "pods": pods,
        }
        rows = [{**p, "age": human_seconds(p["age_seconds"]),
                 "reason": p["waiting_reason"] or p["last_termination_reason"],
                 "exit": p["last_exit_code"]} for p in pods]
        where = f"{params.namespace}" + (f" ({params.selector})" if params.selector else "")
        title = (f"{len(pods)} pod(s) in {where}, {payload['not_ready_count']} not ready, "
                 f"{payload['total_restarts']} restart(s)")
        return Finding(title, payload, table(rows, ["name", "phase", "ready_containers", "restarts", "reason",
                                                    "exit", "age", "node", "image"], empty="no pods match"))


class EventsParams(NamespacedParams):
    # Only events about this object (by kind and name); without them, the whole namespace.
    kind: Literal["Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "Node",
                  "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler"] | None = None
    name: K8sName | None = None
    type: Literal["Warning", "Normal"] | None = None
    limit: int = Field(default=20, ge=1, le=500)


def _event_time(event: Any) -> Any:
    return (event.last_timestamp or event.event_time or event.first_timestamp
            or event.metadata.creation_timestamp)


@registry.register
class Events(Collector[EventsParams]):
    """`kubectl get events --sort-by=.lastTimestamp` for a namespace or one object, newest first."""

    name = "kubernetes.events"
    params_model = EventsParams

    async def collect(self, params: EventsParams, ctx: CollectorContext) -> Finding:
        from kubernetes_asyncio import client as k8s

        core = k8s.CoreV1Api(await ctx.targets.kubernetes(params.target))
        fields = [f"involvedObject.{k}={v}" for k, v in (("kind", params.kind), ("name", params.name)) if v]
        if params.type:
            fields.append(f"type={params.type}")
        found = await core.list_namespaced_event(params.namespace, **given(field_selector=",".join(fields)))
        newest = sorted(found.items, key=lambda e: _event_time(e).timestamp() if _event_time(e) else 0,
                        reverse=True)[: params.limit]
        events: list[dict[str, Any]] = [{
            "type": e.type,
            "reason": e.reason,
            "object": f"{e.involved_object.kind}/{e.involved_object.name}",
            "message": e.message,
            "count": e.count or 1,
            "last_seen": iso(_event_time(e)),
            "age_seconds": age_seconds(_event_time(e)),
        } for e in newest]
        payload = {"namespace": params.namespace, "event_count": len(events),
                   "warning_count": sum(e["type"] == "Warning" for e in events),
                   "reasons": dict(Counter(e["reason"] for e in events if e["reason"])), "events": events}
        subject = f"{params.kind or 'object'} {params.name}" if params.name else f"namespace {params.namespace}"
        rows = [{**e, "age": human_seconds(e["age_seconds"])} for e in events]
        return Finding(f"{len(events)} event(s) for {subject}, {payload['warning_count']} warning(s)", payload,
                       table(rows, ["age", "type", "reason", "object", "count", "message"], empty="no events"))


class LogsParams(NamespacedParams):
    # One pod by name, or up to `max_pods` pods by label selector (`kubectl logs -l app=api`).
    pod: K8sName | None = None
    selector: LabelSelector | None = None
    container: K8sName | None = None
    tail_lines: int = Field(default=200, ge=1, le=10_000)
    since: Duration | None = None
    previous: bool = False
    # Keep only lines matching this regular expression (`| grep ERROR`).
    grep: str | None = Field(default=None, max_length=200)
    max_pods: int = Field(default=3, ge=1, le=20)

    @model_validator(mode="after")
    def _one_source(self) -> LogsParams:
        if (self.pod is None) == (self.selector is None):
            raise ValueError("give exactly one of 'pod' or 'selector'")
        return self

    @field_validator("grep")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
        return value


@registry.register
class Logs(Collector[LogsParams]):
    """`kubectl logs --tail=N [--previous] [-c container] | grep …`."""

    name = "kubernetes.logs"
    params_model = LogsParams

    async def collect(self, params: LogsParams, ctx: CollectorContext) -> Finding:
        from kubernetes_asyncio import client as k8s
        from kubernetes_asyncio.client.exceptions import ApiException

        core = k8s.CoreV1Api(await ctx.targets.kubernetes(params.target))
        if params.pod is not None:
            pods = [params.pod]
        else:
            found = await core.list_namespaced_pod(params.namespace,
                                                   **given(label_selector=params.selector, limit=params.max_pods))
            pods = [p.metadata.name for p in found.items][: params.max_pods]
        pattern = re.compile(params.grep) if params.grep else None
        results: list[dict[str, Any]] = []
        sections: list[str] = []
        for pod in pods:
            options = given(tail_lines=params.tail_lines, previous=params.previous or None,
                            container=params.container,
                            since_seconds=max(1, int(params.since)) if params.since is not None else None)
            try:
                text = await core.read_namespaced_pod_log(pod, params.namespace, **options)
            except ApiException as exc:
                results.append({"pod": pod, "error": f"{exc.status} {exc.reason}", "lines": 0, "matched": 0})
                sections.append(f"== {pod}: cannot read logs: {exc.status} {exc.reason}")
                continue
            lines = (text or "").splitlines()
            kept = [line for line in lines if pattern.search(line)] if pattern else lines
            results.append({"pod": pod, "lines": len(lines), "matched": len(kept)})
            sections.append("\n".join([f"== {pod}" + (" (previous)" if params.previous else ""), *kept]))
        payload = {"namespace": params.namespace, "container": params.container, "previous": params.previous,
                   "grep": params.grep, "pods": results, "line_count": sum(r["lines"] for r in results),
                   "matched_count": sum(r["matched"] for r in results)}
        status = EvidenceStatus.OK if pods else EvidenceStatus.SKIPPED
        what = f"{payload['matched_count']} line(s) matching {params.grep!r}" if params.grep else \
            f"{payload['line_count']} line(s)"
        return Finding(f"logs of {len(pods)} pod(s) in {params.namespace}: {what}", payload,
                       "\n".join(sections) or "no pods match", status)


class RolloutParams(NamespacedParams):
    name: K8sName
    history: int = Field(default=10, ge=1, le=50)


@registry.register
class Rollout(Collector[RolloutParams]):
    """`kubectl rollout status` and `rollout history` of a Deployment: replicas, conditions and the
    ReplicaSet revisions with image, change-cause and age."""

    name = "kubernetes.rollout"
    params_model = RolloutParams

    async def collect(self, params: RolloutParams, ctx: CollectorContext) -> Finding:
        from kubernetes_asyncio import client as k8s

        apps = k8s.AppsV1Api(await ctx.targets.kubernetes(params.target))
        deployment = await apps.read_namespaced_deployment(params.name, params.namespace,
                                                           _request_timeout=REQUEST_TIMEOUT)
        selector = ",".join(f"{k}={v}" for k, v in (deployment.spec.selector.match_labels or {}).items())
        sets = await apps.list_namespaced_replica_set(params.namespace, **given(label_selector=selector))
        uid = deployment.metadata.uid
        revisions: list[dict[str, Any]] = []
        for rs in sets.items:
            owners = rs.metadata.owner_references or []
            if uid and not any(o.uid == uid for o in owners):
                continue
            annotations = rs.metadata.annotations or {}
            containers = rs.spec.template.spec.containers if rs.spec and rs.spec.template else []
            revisions.append({
                "revision": int(annotations.get(REVISION, "0") or 0),
                "replicaset": rs.metadata.name,
                "image": ", ".join(c.image for c in containers),
                "change_cause": annotations.get(CHANGE_CAUSE),
                "replicas": (rs.status.replicas if rs.status else None) or 0,
                "created": iso(rs.metadata.creation_timestamp),
                "age_seconds": age_seconds(rs.metadata.creation_timestamp),
            })
        revisions.sort(key=lambda r: r["revision"], reverse=True)
        revisions = revisions[: params.history]
        status, spec = deployment.status, deployment.spec
        desired = spec.replicas if spec.replicas is not None else 1
        updated = (status.updated_replicas if status else None) or 0
        ready = (status.ready_replicas if status else None) or 0
        available = (status.available_replicas if status else None) or 0
        conditions = [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                      for c in ((status.conditions if status else None) or [])]
        progress = next((c for c in conditions if c["type"] == "Progressing"), None)
        stalled = progress is not None and progress["reason"] == "ProgressDeadlineExceeded"
        newest_age: float | None = revisions[0]["age_seconds"] if revisions else None
        payload = {
            "deployment": params.name, "namespace": params.namespace,
            "current_revision": int((deployment.metadata.annotations or {}).get(REVISION, "0") or 0),
            "desired": desired, "updated": updated, "ready": ready, "available": available,
            "unavailable": max(0, desired - available),
            "complete": updated == desired and available == desired and ready == desired,
            "stalled": stalled,
            "conditions": conditions,
            "newest_revision_age_seconds": newest_age,
            "revisions": revisions,
        }
        state = "complete" if payload["complete"] else "stalled" if stalled else "in progress"
        head = (f"deployment {params.namespace}/{params.name}: {ready}/{desired} ready, {updated} updated, "
                f"{available} available; rollout {state}")
        rows = [{**r, "age": human_seconds(r["age_seconds"])} for r in revisions]
        return Finding(f"rollout of {params.name}: {state}, revision {payload['current_revision']}"
                       + (f" ({human_seconds(newest_age)} old)" if revisions else ""),
                       payload, head + "\n\n" + table(rows, ["revision", "replicaset", "replicas", "image", "age",
                                                             "change_cause"], empty="no ReplicaSets"))


class NodesParams(TargetParams):
    selector: LabelSelector = ""


@registry.register
class Nodes(Collector[NodesParams]):
    """`kubectl get nodes` plus the pressure conditions `describe node` shows."""

    name = "kubernetes.nodes"
    params_model = NodesParams

    async def collect(self, params: NodesParams, ctx: CollectorContext) -> Finding:
        from kubernetes_asyncio import client as k8s

        core = k8s.CoreV1Api(await ctx.targets.kubernetes(params.target))
        found = await core.list_node(**given(label_selector=params.selector))
        nodes: list[dict[str, Any]] = []
        for node in found.items:
            conditions = {c.type: c.status for c in ((node.status.conditions if node.status else None) or [])}
            problems = [t for t, s in conditions.items() if (t == "Ready") != (s == "True")]
            nodes.append({
                "name": node.metadata.name,
                "ready": conditions.get("Ready") == "True",
                "unschedulable": bool(node.spec.unschedulable) if node.spec else False,
                "problems": problems,
                "conditions": conditions,
                "kubelet": node.status.node_info.kubelet_version if node.status and node.status.node_info else None,
                "age_seconds": age_seconds(node.metadata.creation_timestamp),
            })
        payload = {"node_count": len(nodes), "not_ready_count": sum(not n["ready"] for n in nodes),
                   "pressure_count": sum(any(p.endswith("Pressure") for p in n["problems"]) for n in nodes),
                   "unschedulable_count": sum(n["unschedulable"] for n in nodes), "nodes": nodes}
        rows = [{**n, "problems": ", ".join(n["problems"]) or None, "age": human_seconds(n["age_seconds"])}
                for n in nodes]
        return Finding(f"{len(nodes)} node(s), {payload['not_ready_count']} not ready, "
                       f"{payload['pressure_count']} under pressure", payload,
                       table(rows, ["name", "ready", "unschedulable", "problems", "kubelet", "age"], empty="no nodes"))


_CPU = {"n": 1e-6, "u": 1e-3, "m": 1.0, "": 1000.0}
_MEMORY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "": 1}
_QUANTITY = re.compile(r"^([0-9.]+)([A-Za-z]*)$")


def cpu_millicores(quantity: str) -> float:
    match = _QUANTITY.match(quantity)
    if not match or match.group(2) not in _CPU:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    return round(float(match.group(1)) * _CPU[match.group(2)], 1)


def memory_bytes(quantity: str) -> int:
    match = _QUANTITY.match(quantity)
    if not match or match.group(2) not in _MEMORY:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(float(match.group(1)) * _MEMORY[match.group(2)])


@registry.register
class PodMetrics(Collector[SelectorParams]):
    """`kubectl top pods -l …` from metrics.k8s.io; `skipped` when the cluster has no metrics-server."""

    name = "kubernetes.pod_metrics"
    params_model = SelectorParams

    async def collect(self, params: SelectorParams, ctx: CollectorContext) -> Finding:
        from kubernetes_asyncio import client as k8s
        from kubernetes_asyncio.client.exceptions import ApiException

        custom = k8s.CustomObjectsApi(await ctx.targets.kubernetes(params.target))
        try:
            found = await custom.list_namespaced_custom_object(
                "metrics.k8s.io", "v1beta1", params.namespace, "pods",
                **given(label_selector=params.selector, limit=params.max_pods))
        except ApiException as exc:
            if exc.status in (404, 503):
                return Finding("pod metrics unavailable", {"reason": f"metrics.k8s.io answered {exc.status}"},
                               "the metrics.k8s.io API is not served (no metrics-server?)", EvidenceStatus.SKIPPED)
            raise
        pods = []
        for item in found.get("items", []):
            containers = [{"container": c["name"], "cpu_millicores": cpu_millicores(c["usage"]["cpu"]),
                           "memory_bytes": memory_bytes(c["usage"]["memory"])} for c in item.get("containers", [])]
            pods.append({"pod": item["metadata"]["name"],
                         "cpu_millicores": round(sum(c["cpu_millicores"] for c in containers), 1),
                         "memory_bytes": sum(c["memory_bytes"] for c in containers),
                         "containers": containers})
        pods.sort(key=lambda p: p["memory_bytes"], reverse=True)
        payload = {"namespace": params.namespace, "pod_count": len(pods),
                   "total_cpu_millicores": round(sum(p["cpu_millicores"] for p in pods), 1),
                   "total_memory_bytes": sum(p["memory_bytes"] for p in pods),
                   "max_memory_bytes": max((p["memory_bytes"] for p in pods), default=0),
                   "max_cpu_millicores": max((p["cpu_millicores"] for p in pods), default=0), "pods": pods}
        rows = [{"pod": p["pod"], "cpu": f"{p['cpu_millicores']:g}m", "memory": f"{p['memory_bytes'] / 2**20:.0f}Mi"}
                for p in pods]
        return Finding(f"usage of {len(pods)} pod(s) in {params.namespace}: {payload['total_cpu_millicores']:g}m "
                       f"CPU, {payload['total_memory_bytes'] / 2**20:.0f}Mi memory",
                       payload, table(rows, ["pod", "cpu", "memory"], empty="no pod metrics"))
