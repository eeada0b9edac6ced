"""Kubernetes collectors through the real kubernetes-asyncio client against the fake API server: an
OOMKilled pod, a CrashLoopBackOff pod, events, logs, a deployment's ReplicaSet history, nodes, and
pod metrics with and without metrics.k8s.io."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import pytest

from responder.collectors.kubernetes import SelectorParams
from responder.config import Config
from responder.evidence import EvidenceStatus
from tests.fakes.kube_api import FakeKubeAPI, container_status
from tests.support.collectors import collect, config_with


def ago(seconds: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as api:
        api.add_pod("prod", "api-1", labels={"app": "api"}, containers=[
            container_status("api", "registry/api:2.4.1", ready=False, restarts=7, waiting="CrashLoopBackOff",
                             last_terminated=("Error", 1))])
        api.add_pod("prod", "api-2", labels={"app": "api"}, containers=[
            container_status("api", "registry/api:2.4.1", restarts=3, last_terminated=("OOMKilled", 137))])
        api.add_pod("prod", "api-3", labels={"app": "api"}, containers=[container_status("api", "registry/api:2.4.1")])
        api.add_pod("prod", "worker-1", labels={"app": "worker"}, containers=[container_status("worker", "w:1")])
        api.logs[("prod", "api-1", "api", False)] = "\n".join(
            [f"INFO request {i} ok" for i in range(50)] + ["ERROR db timeout", "INFO retry", "ERROR db timeout again"])
        api.logs[("prod", "api-1", "api", True)] = "INFO starting\nFATAL out of memory"
        api.logs[("prod", "api-2", "api", False)] = "INFO fine\nERROR cache miss storm"
        api.add_event("prod", "Pod", "api-1", "BackOff", "Back-off restarting failed container", last_seen=ago(30),
                      count=12)
        api.add_event("prod", "Pod", "api-2", "OOMKilling", "Memory cgroup out of memory", last_seen=ago(300))
        api.add_event("prod", "Deployment", "api", "ScalingReplicaSet", "Scaled up replica set api-7d9 to 3",
                      type_="Normal", last_seen=ago(10))
        deployment = api.add_deployment("prod", "api", replicas=3, revision=3, image="registry/api:2.4.1")
        deployment["status"] = {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2,
                                "conditions": [{"type": "Progressing", "status": "True",
                                                "reason": "NewReplicaSetAvailable"}]}
        api.add_replicaset(deployment, 1, "registry/api:2.3.0", "5f6", created=ago(86400 * 3), change_cause="v2.3.0")
        api.add_replicaset(deployment, 2, "registry/api:2.4.0", "6a7", created=ago(86400))
        api.add_replicaset(deployment, 3, "registry/api:2.4.1", "7d9", created=ago(600), change_cause="hotfix",
                           replicas=3)
        api.add_node("node-1")
        api.add_node("node-2", ready=False, pressure=("MemoryPressure",))
        yield api


def kube_config(kube: FakeKubeAPI) -> Config:
    return config_with(**{"targets.kubernetes": {"prod": kube.target()}})


async def test_pods_show_oomkilled_and_crashloop(kube: FakeKubeAPI) -> None:
    pods = await collect(kube_config(kube), "kubernetes.pods", target="prod", namespace="prod", selector="app=api")
    assert pods.status is EvidenceStatus.OK, pods.text
    p = pods.payload
    assert (p["pod_count"], p["ready_count"], p["not_ready_count"]) == (3, 2, 1)
    assert p["total_restarts"] == 10 and p["max_restarts"] == 7
    assert p["oomkilled_count"] == 1 and p["crashloop_count"] == 1
    assert p["reasons"] == {"CrashLoopBackOff": 1, "Error": 1, "OOMKilled": 1}
    by_name = {pod["name"]: pod for pod in p["pods"]}
    assert by_name["api-2"]["last_termination_reason"] == "OOMKilled" and by_name["api-2"]["last_exit_code"] == 137
    assert by_name["api-1"]["waiting_reason"] == "CrashLoopBackOff" and by_name["api-1"]["ready_containers"] == "0/1"
    assert "registry/api:2.4.1" in by_name["api-3"]["image"]
    assert "CrashLoopBackOff" in pods.text and "OOMKilled" in pods.text
    listed = [r for r in kube.requests if r.path == "/api/v1/namespaces/prod/pods"]
    assert listed[-1].query["labelSelector"] == "app=api"


async def test_events_newest_first_and_filtered_by_object(kube: FakeKubeAPI) -> None:
    config = kube_config(kube)
    events = await collect(config, "kubernetes.events", target="prod", namespace="prod")
    assert [e["reason"] for e in events.payload["events"]] == ["ScalingReplicaSet", "BackOff", "OOMKilling"]
    assert events.payload["warning_count"] == 2 and events.payload["events"][1]["count"] == 12

    one = await collect(config, "kubernetes.events", target="prod", namespace="prod", kind="Pod", name="api-1",
                        type="Warning")
    assert [e["object"] for e in one.payload["events"]] == ["Pod/api-1"]
    assert kube.requests[-1].query["fieldSelector"] == "involvedObject.kind=Pod,involvedObject.name=api-1,type=Warning"


async def test_logs_tail_grep_previous_and_selector(kube: FakeKubeAPI) -> None:
    config = kube_config(kube)
    errors = await collect(config, "kubernetes.logs", target="prod", namespace="prod", pod="api-1", tail_lines=5,
                           grep="ERROR")
    assert errors.payload["pods"] == [{"pod": "api-1", "lines": 5, "matched": 2}]
    assert "ERROR db timeout again" in errors.text and "INFO retry" not in errors.text
    assert kube.requests[-1].query["tailLines"] == "5"

    previous = await collect(config, "kubernetes.logs", target="prod", namespace="prod", pod="api-1",
                             container="api", previous=True)
    assert "FATAL out of memory" in previous.text and kube.requests[-1].query["previous"].lower() == "true"

    many = await collect(config, "kubernetes.logs", target="prod", namespace="prod", selector="app=api",
                         grep="ERROR", max_pods=3)
    assert many.payload["matched_count"] == 3
    missing = next(r for r in many.payload["pods"] if r["pod"] == "api-3")
    assert missing["error"].startswith("404")


async def test_rollout_history_and_newest_revision_age(kube: FakeKubeAPI) -> None:
    rollout = await collect(kube_config(kube), "kubernetes.rollout", target="prod", namespace="prod", name="api")
    p = rollout.payload
    assert [r["revision"] for r in p["revisions"]] == [3, 2, 1]
    assert p["revisions"][0]["image"] == "registry/api:2.4.1" and p["revisions"][0]["change_cause"] == "hotfix"
    assert 590 <= p["newest_revision_age_seconds"] <= 700
    assert (p["desired"], p["ready"], p["unavailable"], p["complete"], p["current_revision"]) == (3, 2, 1, False, 3)
    assert "registry/api:2.3.0" in rollout.text and "v2.3.0" in rollout.text


async def test_nodes_and_pod_metrics_absent_then_present(kube: FakeKubeAPI) -> None:
    config = kube_config(kube)
    nodes = await collect(config, "kubernetes.nodes", target="prod")
    assert nodes.payload["node_count"] == 2 and nodes.payload["not_ready_count"] == 1
    assert nodes.payload["pressure_count"] == 1
    assert next(n for n in nodes.payload["nodes"] if n["name"] == "node-2")["problems"] == ["MemoryPressure", "Ready"]

    absent = await collect(config, "kubernetes.pod_metrics", target="prod", namespace="prod", selector="app=api")
    assert absent.status is EvidenceStatus.SKIPPED

    kube.pod_metrics = {"prod": [
        {"metadata": {"name": "api-1"}, "containers": [{"name": "api", "usage": {"cpu": "250m", "memory": "512Mi"}}]},
        {"metadata": {"name": "api-2"}, "containers": [{"name": "api", "usage": {"cpu": "1500000n",
                                                                                 "memory": "1Gi"}}]}]}
    present = await collect(config, "kubernetes.pod_metrics", target="prod", namespace="prod", selector="app=api")
    assert present.status is EvidenceStatus.OK
    assert present.payload["max_memory_bytes"] == 2**30 and present.payload["total_cpu_millicores"] == 251.5
    assert [p["pod"] for p in present.payload["pods"]] == ["api-2", "api-1"]


async def test_unsafe_label_values_are_refused_before_any_request() -> None:
    with pytest.raises(ValueError):
        SelectorParams(namespace="prod; rm -rf /")
    with pytest.raises(ValueError):
        SelectorParams(namespace="prod", selector="app=api)|x")
