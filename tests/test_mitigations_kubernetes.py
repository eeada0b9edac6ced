"""Kubernetes actions through the real kubernetes-asyncio client against a fake API server: a storm
restarts once, dry-run writes nothing, rollout undo applies the previous ReplicaSet's template, scaling
stays within bounds, and a false condition skips with its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tests.support.plugins  # noqa: F401  (the test.sleep collector)
from tests.conftest import make_config, write_rules
from tests.fakes.kube_api import FakeKubeAPI
from tests.test_mitigations_guard import alerts, audit, post_burst, wait_processed

# One incident per alert (`group_by: ['...']`): a storm of incidents all deciding about one deployment.
RESTART = """
rules:
  - name: api-restart
    match: ['alertname="ApiDown"']
    group_by: ['...']
    mitigations:
      - id: restart
        type: kubernetes.rollout_restart
        mode: {mode}
        params: {{target: prod, namespace: "{{{{ labels.namespace }}}}", name: "{{{{ labels.deployment }}}}"}}
"""

UNDO = """
rules:
  - name: api-undo
    match: ['alertname="ApiDown"']
    collectors:
      - {id: probe, type: test.sleep, params: {seconds: 0.01}}
    mitigations:
      - id: undo
        type: kubernetes.rollout_undo
        when: ["evidence.probe.payload.seconds < LIMIT"]
        params: {target: prod, namespace: "{{ labels.namespace }}", name: "{{ labels.deployment }}"}
      - id: scale
        type: kubernetes.scale
        params: {target: prod, namespace: prod, name: "{{ labels.deployment }}", step: 2, max_replicas: 5}
      - id: kill-pod
        type: kubernetes.delete_pod
        params: {target: prod, namespace: prod, name: "{{ labels.pod }}"}
"""


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as api:
        deployment = api.add_deployment("prod", "api", replicas=4, revision=3, image="app:3")
        for revision, pod_hash in ((1, "aaa111"), (2, "bbb222"), (3, "ccc333")):
            api.add_replicaset(deployment, revision, f"app:{revision}", pod_hash)
        api.add_pod("prod", "api-0")
        yield api


def kube_config(store_url: str, tmp_path: Path, rules: str, kube: FakeKubeAPI, **overrides: Any) -> Any:
    return make_config(store_url, write_rules(tmp_path / "rules", rules), **{
        "targets": {"kubernetes": {"prod": kube.target()}},
        "mitigations.mode": "enforce", "pipeline.workers": 8, **overrides})


async def test_storm_restarts_the_deployment_exactly_once(daemon_client: Any, store_url: str, tmp_path: Path,
                                                           kube: FakeKubeAPI) -> None:
    client, daemon = await daemon_client(kube_config(store_url, tmp_path, RESTART.format(mode="enforce"), kube))
    await post_burst(client, alerts(500))
    await wait_processed(daemon, 500)
    rows = await audit(daemon)
    writes = kube.writes()
    assert [(w.method, w.path) for w in writes] == [("PATCH", "/apis/apps/v1/namespaces/prod/deployments/api")]
    assert writes[0].content_type.startswith("application/strategic-merge-patch+json")
    annotations = kube.deployments[("prod", "api")]["spec"]["template"]["metadata"]["annotations"]
    executed = [r for r in rows if r["outcome"] == "executed"]
    assert len(executed) == 1 and annotations["kubectl.kubernetes.io/restartedAt"].endswith("Z")
    assert executed[0]["target"] == "kubernetes/prod/prod/deployment/api"
    assert {r["guard"] for r in rows if r["outcome"] == "skipped"} <= {"cooldown", "lock"}
    assert len(rows) == 500


async def test_dry_run_storm_makes_no_write(daemon_client: Any, store_url: str, tmp_path: Path,
                                            kube: FakeKubeAPI) -> None:
    client, daemon = await daemon_client(kube_config(store_url, tmp_path, RESTART.format(mode="dry-run"), kube))
    await post_burst(client, alerts(500))
    await wait_processed(daemon, 500)
    rows = await audit(daemon)
    assert kube.requests == []
    dry = [r for r in rows if r["outcome"] == "dry-run"]
    assert len(dry) == 1
    assert dry[0]["description"] == "rollout restart deployment prod/api on cluster prod"
    assert dry[0]["reason"] == "would: rollout restart deployment prod/api on cluster prod"


async def test_rollout_undo_scale_and_delete_pod(daemon_client: Any, store_url: str, tmp_path: Path,
                                                 kube: FakeKubeAPI) -> None:
    client, daemon = await daemon_client(kube_config(store_url, tmp_path, UNDO.replace("LIMIT", "1"), kube))
    await post_burst(client, alerts(1))
    await wait_processed(daemon, 1)
    rows = {r["step"]: r for r in await audit(daemon)}
    assert {step: r["outcome"] for step, r in rows.items()} == {"undo": "executed", "scale": "executed",
                                                                "kill-pod": "executed"}
    deployment = kube.deployments[("prod", "api")]
    template = deployment["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == "app:2"
    assert template["metadata"]["labels"] == {"app": "api"}  # no pod-template-hash
    undo = next(w for w in kube.writes() if w.content_type.startswith("application/json-patch+json"))
    assert undo.body[0]["op"] == "replace" and undo.body[0]["path"] == "/spec/template"
    assert '"to_revision":2' in rows["undo"]["output"] and '"from_revision":3' in rows["undo"]["output"]
    assert deployment["spec"]["replicas"] == 5  # 4 + 2, capped at max_replicas
    assert '"capped":true' in rows["scale"]["output"]
    assert ("prod", "api-0") not in kube.pods


async def test_false_condition_skips_the_rollback(daemon_client: Any, store_url: str, tmp_path: Path,
                                                  kube: FakeKubeAPI) -> None:
    client, daemon = await daemon_client(kube_config(store_url, tmp_path, UNDO.replace("LIMIT", "0.001"), kube))
    await post_burst(client, alerts(1))
    await wait_processed(daemon, 1)
    undo = next(r for r in await audit(daemon) if r["step"] == "undo")
    assert (undo["outcome"], undo["guard"]) == ("skipped", "condition")
    assert undo["reason"] == ("condition 'evidence.probe.payload.seconds < 0.001' is false:"
                              " evidence.probe.payload.seconds is 0.01")
    assert kube.deployments[("prod", "api")]["spec"]["template"]["spec"]["containers"][0]["image"] == "app:3"
    assert not any(w.content_type.startswith("application/json-patch+json") for w in kube.writes())
