"""A small fake Kubernetes API server, reached through the real kubernetes-asyncio client.

It keeps deployments, replica sets and pods as plain JSON objects, records every request, and applies
the writes the mitigations make: strategic-merge and JSON patches of deployments and pod deletions.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


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
    url: str = ""
    _server: TestServer | None = None

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

    def add_replicaset(self, deployment: dict[str, Any], revision: int, image: str, pod_hash: str) -> None:
        meta = deployment["metadata"]
        labels = {**deployment["spec"]["selector"]["matchLabels"], "pod-template-hash": pod_hash}
        name = f"{meta['name']}-{pod_hash}"
        self.replicasets[(meta["namespace"], name)] = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                         "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": meta["name"], "image": image}]}}},
        }

    def add_pod(self, namespace: str, name: str) -> None:
        self.pods[(namespace, name)] = {"apiVersion": "v1", "kind": "Pod",
                                        "metadata": {"name": name, "namespace": namespace}}

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
        parts = request.path.strip("/").split("/")
        try:
            return self._route(request.method, parts, request.query, request.headers.get("Content-Type", ""), body)
        except KeyError as exc:
            return web.json_response({"kind": "Status", "status": "Failure", "reason": "NotFound",
                                      "message": f"{exc} not found", "code": 404}, status=404)

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
                wanted = dict(term.split("=", 1) for term in query.get("labelSelector", "").split(",") if term)
                items = [rs for (rs_ns, _), rs in self.replicasets.items() if rs_ns == ns
                         and all(rs["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
                return web.json_response({"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {},
                                          "items": items})
            case ["api", "v1", "namespaces", ns, "pods", name] if method == "DELETE":
                pod = self.pods.pop((ns, name))
                return web.json_response(pod)
        return web.json_response({"kind": "Status", "code": 404, "message": "no such route"}, status=404)
