"""A small fake Kubernetes API server, reached through the real kubernetes-asyncio client.

It keeps deployments, replica sets and pods as plain JSON objects, records every request, and applies
the writes the mitigations make: strategic-merge and JSON patches of deployments and pod deletions.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fakes.kube_selectors import SelectorError, selector_terms


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = copy.deepcopy(value)


def _json_patch(target: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, leaf = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node = target
        for part in parents:
            node = node.setdefault(part, {})
        if op["op"] in ("replace", "add"):
            node[leaf] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            node.pop(leaf, None)
        else:
            raise ValueError(f"unsupported JSON patch op {op['op']}")


@dataclass
class FakeKubeAPI:
    requests: list[Recorded] = field(default_factory=list)
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    replicasets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # Pod logs by (namespace, pod, container, previous).
    logs: dict[tuple[str, str, str, bool], str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    # metrics.k8s.io PodMetrics by namespace; None: the API is not served (no metrics-server).
    pod_metrics: dict[str, list[dict[str, Any]]] | None = None
    url: str = ""
    # The bearer token the API server expects, as a ServiceAccount token would be checked.
    token: str = "fake-kube-token"
    _server: TestServer | None = None

    def target(self, env: str = "FAKE_KUBE_TOKEN") -> dict[str, Any]:
        """A `targets.kubernetes` entry for this server; the token travels in the environment variable `env`
        (set here, so daemons started as subprocesses inherit it)."""
        os.environ[env] = self.token
        return {"url": self.url, "token": {"env": env}, "verify_tls": False}

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    # --- seeding --------------------------------------------------------------------------------

    def add_deployment(self, namespace: str, name: str, *, replicas: int = 2, revision: int = 1,
                       image: str = "app:1") -> dict[str, Any]:
        labels = {"app": name}
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                         "annotations": {"deployment.kubernetes.io/revision": str(revision)}, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": name, "image": image}]}}},
            "status": {"replicas": replicas},
        }
        self.deployments[(namespace, name)] = deployment
        return deployment

    def add_replicaset(self, deployment: dict[str, Any], revision: int, image: str, pod_hash: str, *,
                       created: str = "2024-05-01T10:00:00Z", change_cause: str | None = None,
                       replicas: int = 0) -> None:
        meta = deployment["metadata"]
        annotations = {"deployment.kubernetes.io/revision": str(revision)}
        if change_cause:
            annotations["kubernetes.io/change-cause"] = change_cause
        labels = {**deployment["spec"]["selector"]["matchLabels"], "pod-template-hash": pod_hash}
        name = f"{meta['name']}-{pod_hash}"
        self.replicasets[(meta["namespace"], name)] = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                         "annotations": annotations, "creationTimestamp": created,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": meta["name"], "image": image}]}}},
            "status": {"replicas": replicas},
        }

    def add_pod(self, namespace: str, name: str, *, labels: dict[str, str] | None = None,
                containers: list[dict[str, Any]] | None = None, phase: str = "Running",
                created: str = "2024-05-01T10:00:00Z", node: str = "node-1") -> None:
        """A pod; `containers` are container statuses as the kubelet reports them (see `container_status`)."""
        statuses = containers or []
        self.pods[(namespace, name)] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": [{"name": c["name"], "image": c["image"]} for c in statuses]},
            "status": {"phase": phase, "containerStatuses": statuses},
        }

    def add_event(self, namespace: str, kind: str, name: str, reason: str, message: str, *,
                  type_: str = "Warning", last_seen: str = "2024-05-01T10:00:00Z", count: int = 1) -> None:
        self.events.append({
            "metadata": {"name": f"{name}.{len(self.events)}", "namespace": namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": namespace},
            "reason": reason, "message": message, "type": type_, "count": count,
            "firstTimestamp": last_seen, "lastTimestamp": last_seen,
        })

    def add_node(self, name: str, *, ready: bool = True, pressure: tuple[str, ...] = ()) -> None:
        conditions = [{"type": t, "status": "True" if t in pressure else "False"}
                      for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
        self.nodes.append({"metadata": {"name": name, "creationTimestamp": "2024-01-01T00:00:00Z"},
                           "spec": {}, "status": {"conditions": conditions,
                                                  "nodeInfo": {
                                                      "architecture": "amd64", "bootID": "b", "machineID": "m",
                                                      "systemUUID": "s", "containerRuntimeVersion": "containerd://1.7",
                                                      "kernelVersion": "6.1.0", "kubeProxyVersion": "v1.29.4",
                                                      "kubeletVersion": "v1.29.4", "operatingSystem": "linux",
                                                      "osImage": "Debian GNU/Linux 12"}}})

    def _selected(self, table: dict[tuple[str, str], dict[str, Any]], ns: str, query: Any) -> list[dict[str, Any]]:
        terms = selector_terms(query.get("labelSelector", ""))
        return [obj for (obj_ns, _), obj in table.items() if obj_ns == ns
                and all(term.matches(obj["metadata"].get("labels", {})) for term in terms)]

    # --- server ---------------------------------------------------------------------------------

    async def start(self) -> FakeKubeAPI:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self.url = str(self._server.make_url("")).rstrip("/")
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    async def __aenter__(self) -> FakeKubeAPI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(Recorded(request.method, request.path, dict(request.query),
                                      request.headers.get("Content-Type", ""), body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": "Unauthorized", "reason": "Unauthorized", "code": 401}, status=401)
        parts = request.path.strip("/").split("/")
        try:
            return self._route(request.method, parts, request.query, request.headers.get("Content-Type", ""), body)
        except KeyError as exc:
            return web.json_response({"kind": "Status", "status": "Failure", "reason": "NotFound",
                                      "message": f"{exc} not found", "code": 404}, status=404)
        except SelectorError as exc:
            return web.json_response({"kind": "Status", "status": "Failure", "reason": "BadRequest",
                                      "message": f"unable to parse requirement: {exc}", "code": 400}, status=400)

    def _route(self, method: str, parts: list[str], query: Any, content_type: str, body: Any) -> web.Response:
        match parts:
            case ["apis", "apps", "v1", "namespaces", ns, "deployments", name]:
                deployment = self.deployments[(ns, name)]
                if method == "PATCH":
                    if content_type.startswith("application/json-patch+json"):
                        _json_patch(deployment, body)
                    else:
                        _merge(deployment, body)
                return web.json_response(deployment)
            case ["apis", "apps", "v1", "namespaces", ns, "replicasets"]:
                return web.json_response({"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {},
                                          "items": self._selected(self.replicasets, ns, query)})
            case ["api", "v1", "namespaces", ns, "pods"] if method == "GET":
                return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                          "items": self._selected(self.pods, ns, query)})
            case ["api", "v1", "namespaces", ns, "pods", name, "log"]:
                pod = self.pods[(ns, name)]
                container = query.get("container") or pod["spec"]["containers"][0]["name"]
                lines = self.logs[(ns, name, container, query.get("previous", "").lower() == "true")].splitlines()
                tail = int(query.get("tailLines", len(lines)))
                return web.Response(text="".join(f"{line}\n" for line in lines[-tail:] if tail))
            case ["api", "v1", "namespaces", ns, "events"]:
                wanted = dict(term.split("=", 1) for term in query.get("fieldSelector", "").split(",") if term)
                fields = {"involvedObject.kind": lambda e: e["involvedObject"]["kind"],
                          "involvedObject.name": lambda e: e["involvedObject"]["name"], "type": lambda e: e["type"]}
                items = [e for e in self.events if e["metadata"]["namespace"] == ns
                         and all(fields[k](e) == v for k, v in wanted.items())]
                return web.json_response({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items})
            case ["api", "v1", "nodes"]:
                return web.json_response({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": self.nodes})
            case ["apis", "metrics.k8s.io", "v1beta1", "namespaces", ns, "pods"] if self.pod_metrics is not None:
                return web.json_response({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetricsList",
                                          "metadata": {}, "items": self.pod_metrics.get(ns, [])})
            case ["api", "v1", "namespaces", ns, "pods", name] if method == "DELETE":
                pod = self.pods.pop((ns, name))
                return web.json_response(pod)
        return web.json_response({"kind": "Status", "code": 404, "message": "no such route"}, status=404)


def container_status(name: str, image: str, *, ready: bool = True, restarts: int = 0,
                     waiting: str | None = None, last_terminated: tuple[str, int] | None = None) -> dict[str, Any]:
    """A container status: running, or waiting for `waiting` (CrashLoopBackOff), with the reason and exit
    code of its last termination (OOMKilled, 137)."""
    state: dict[str, Any] = ({"waiting": {"reason": waiting, "message": "back-off restarting failed container"}}
                             if waiting else {"running": {"startedAt": "2024-05-01T10:05:00Z"}})
    last = ({"terminated": {"reason": last_terminated[0], "exitCode": last_terminated[1],
                            "finishedAt": "2024-05-01T10:04:00Z"}} if last_terminated else {})
    return {"name": name, "image": image, "imageID": "", "ready": ready, "restartCount": restarts,
            "started": ready, "state": state, "lastState": last}
