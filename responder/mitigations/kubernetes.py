"""Kubernetes actions, done the way kubectl does them: rollout restart, scale, rollout undo, delete a pod."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from responder.mitigations.base import Action, ActionContext, registry
from responder.params import K8sName, K8sNamespace, TargetName

REQUEST_TIMEOUT = 10
REVISION = "deployment.kubernetes.io/revision"


class WorkloadParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: TargetName = "default"
    namespace: K8sNamespace
    kind: Literal["deployment", "statefulset"] = "deployment"
    name: K8sName


def workload_key(p: WorkloadParams) -> str:
    return f"kubernetes/{p.target}/{p.namespace}/{p.kind}/{p.name}"


class _WorkloadAction(Action[Any]):
    def target(self, params: Any) -> str:
        return workload_key(params)

    def namespace(self, params: Any) -> str | None:
        return str(params.namespace)


@registry.register
class RolloutRestart(_WorkloadAction):
    """`kubectl rollout restart`: a new pod-template annotation makes the controller replace every pod."""

    name = "kubernetes.rollout_restart"
    params_model = WorkloadParams

    def describe(self, params: WorkloadParams) -> str:
        return f"rollout restart {params.kind} {params.namespace}/{params.name} on cluster {params.target}"

    async def execute(self, params: WorkloadParams, ctx: ActionContext) -> dict[str, Any]:
        from kubernetes_asyncio import client as k8s

        apps = k8s.AppsV1Api(await ctx.targets.kubernetes(params.target))
        restarted_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        annotations = {"kubectl.kubernetes.io/restartedAt": restarted_at}
        body = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
        patch = (apps.patch_namespaced_deployment if params.kind == "deployment"
                 else apps.patch_namespaced_stateful_set)
        await patch(params.name, params.namespace, body, _request_timeout=REQUEST_TIMEOUT)
        return {"restartedAt": restarted_at}


class ScaleParams(WorkloadParams):
    # Either an absolute count or a step up from the current one; never above max_replicas.
    replicas: int | None = Field(default=None, ge=0)
    step: int | None = Field(default=None, ge=1)
    max_replicas: int = Field(ge=1, le=1000)
    # Scaling down is refused unless the rule says so explicitly.
    allow_scale_down: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> ScaleParams:
        if (self.replicas is None) == (self.step is None):
            raise ValueError("give exactly one of 'replicas' or 'step'")
        if self.replicas is not None and self.replicas > self.max_replicas:
            raise ValueError(f"replicas {self.replicas} is above max_replicas {self.max_replicas}")
        return self


@registry.register
class Scale(_WorkloadAction):
    name = "kubernetes.scale"
    params_model = ScaleParams

    def describe(self, params: ScaleParams) -> str:
        how = f"to {params.replicas}" if params.replicas is not None else f"up by {params.step}"
        return (f"scale {params.kind} {params.namespace}/{params.name} on cluster {params.target} {how}"
                f" (at most {params.max_replicas}{'' if params.allow_scale_down else ', never down'})")

    async def execute(self, params: ScaleParams, ctx: ActionContext) -> dict[str, Any]:
        from kubernetes_asyncio import client as k8s

        apps = k8s.AppsV1Api(await ctx.targets.kubernetes(params.target))
        # The workload itself, not its scale sub-resource: the same reads and patches the other actions
        # need, so the RBAC the chart grants stays small.
        read: Callable[..., Awaitable[Any]]
        patch: Callable[..., Awaitable[Any]]
        if params.kind == "deployment":
            read, patch = apps.read_namespaced_deployment, apps.patch_namespaced_deployment
        else:
            read, patch = apps.read_namespaced_stateful_set, apps.patch_namespaced_stateful_set
        workload = await read(params.name, params.namespace, _request_timeout=REQUEST_TIMEOUT)
        current = int(workload.spec.replicas or 0)
        wanted = params.replicas if params.replicas is not None else current + (params.step or 0)
        desired = min(wanted, params.max_replicas)
        if desired == current or (desired < current and not params.allow_scale_down):
            why = "already there" if desired == current else "that would scale down, which this step does not allow"
            return {"changed": False, "replicas": current, "wanted": wanted, "note": why}
        await patch(params.name, params.namespace, {"spec": {"replicas": desired}}, _request_timeout=REQUEST_TIMEOUT)
        return {"changed": True, "from": current, "to": desired, "capped": desired != wanted}


class RollbackParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: TargetName = "default"
    namespace: K8sNamespace
    name: K8sName


@registry.register
class RolloutUndo(Action[RollbackParams]):
    """`kubectl rollout undo`: put the previous ReplicaSet's pod template back on the deployment."""

    name = "kubernetes.rollout_undo"
    params_model = RollbackParams

    def target(self, params: RollbackParams) -> str:
        return f"kubernetes/{params.target}/{params.namespace}/deployment/{params.name}"

    def namespace(self, params: RollbackParams) -> str | None:
        return params.namespace

    def describe(self, params: RollbackParams) -> str:
        return (f"rollout undo deployment {params.namespace}/{params.name} on cluster {params.target}"
                " to the previous revision")

    async def execute(self, params: RollbackParams, ctx: ActionContext) -> dict[str, Any]:
        from kubernetes_asyncio import client as k8s

        api = await ctx.targets.kubernetes(params.target)
        apps = k8s.AppsV1Api(api)
        deployment = await apps.read_namespaced_deployment(params.name, params.namespace,
                                                           _request_timeout=REQUEST_TIMEOUT)
        selector = ",".join(f"{k}={v}" for k, v in sorted((deployment.spec.selector.match_labels or {}).items()))
        replica_sets = await apps.list_namespaced_replica_set(params.namespace, label_selector=selector,
                                                              _request_timeout=REQUEST_TIMEOUT)
        uid = deployment.metadata.uid
        owned = [rs for rs in replica_sets.items
                 if any(ref.uid == uid for ref in rs.metadata.owner_references or [])
                 and REVISION in (rs.metadata.annotations or {})]
        current = int((deployment.metadata.annotations or {}).get(REVISION, 0)) or max(
            (_revision(rs) for rs in owned), default=0)
        older = sorted((rs for rs in owned if _revision(rs) < current), key=_revision)
        if not older:
            raise RuntimeError(f"deployment {params.namespace}/{params.name} has no revision before {current}")
        previous = older[-1]
        template = api.sanitize_for_serialization(previous.spec.template)
        # The hash label belongs to the ReplicaSet; the deployment controller adds it back.
        template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
        await apps.patch_namespaced_deployment(
            params.name, params.namespace, [{"op": "replace", "path": "/spec/template", "value": template}],
            _request_timeout=REQUEST_TIMEOUT,
        )
        return {"from_revision": current, "to_revision": _revision(previous), "replicaset": previous.metadata.name}


def _revision(rs: Any) -> int:
    return int((rs.metadata.annotations or {}).get(REVISION, 0))


class PodParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: TargetName = "default"
    namespace: K8sNamespace
    name: K8sName
    grace_period_seconds: int | None = Field(default=None, ge=0, le=3600)


@registry.register
class DeletePod(Action[PodParams]):
    name = "kubernetes.delete_pod"
    params_model = PodParams

    def target(self, params: PodParams) -> str:
        return f"kubernetes/{params.target}/{params.namespace}/pod/{params.name}"

    def namespace(self, params: PodParams) -> str | None:
        return params.namespace

    def describe(self, params: PodParams) -> str:
        return f"delete pod {params.namespace}/{params.name} on cluster {params.target}"

    async def execute(self, params: PodParams, ctx: ActionContext) -> dict[str, Any]:
        from kubernetes_asyncio import client as k8s

        core = k8s.CoreV1Api(await ctx.targets.kubernetes(params.target))
        options = k8s.V1DeleteOptions(grace_period_seconds=params.grace_period_seconds)
        await core.delete_namespaced_pod(params.name, params.namespace, body=options, _request_timeout=REQUEST_TIMEOUT)
        return {"deleted": f"{params.namespace}/{params.name}"}
