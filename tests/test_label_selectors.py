"""A label written into a Kubernetes label selector is one label value or the step is refused: an alert
never adds or changes the selector's terms, so it cannot choose which pods a collector lists or whose
logs it reads. Rendered selectors are read the way the API server reads them (tests/fakes/kube_selectors),
and sent through the real kubernetes-asyncio client to the API fake; `responder check` refuses a selector
template without `| label_value`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.rules.engine import render_steps
from responder.rules.model import Rule
from tests.fakes.kube_api import FakeKubeAPI, container_status
from tests.fakes.kube_selectors import Term, selector_terms
from tests.support.collectors import config_with, run_steps
from tests.test_check import run_check, write
from tests.test_member_templates import group, one_rule, rendered
from tests.test_typed_params import load

# What Kubernetes accepts as a label value (apimachinery's validation), written out independently of the code.
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and LABEL_VALUE.fullmatch(value) is not None


STEPS = """
    collectors:
      - id: pods
        type: kubernetes.pods
        params: {target: prod, namespace: prod, selector: 'app={{ labels.app | label_value }},tier=web'}
      - id: logs
        type: kubernetes.logs
        params: {target: prod, namespace: prod, max_pods: 5,
                 selector: 'app in ({{ alerts.labels.app | label_value | join(",") }}),tier!=db'}
      - id: nodes
        type: kubernetes.nodes
        params: {target: prod, selector: 'pool={{ labels.app | label_value | default("none") }}'}
"""


def check_group(rule: Rule, apps: list[str]) -> None:
    """Render the steps for a group whose members carry `apps` and check each selector: it has exactly
    the terms the rule wrote, with the alert's values as whole values, or the step is refused and its
    error names the label and why."""
    alert, members = group(*({"app": app} for app in apps))
    collectors, _, step_errors = render_steps(rule, alert, members)
    steps = {s.id: s.params.selector for s in collectors}  # type: ignore[attr-defined]
    errors = {str(e).split(":", 1)[0]: str(e) for e in step_errors}
    assert set(steps) | set(errors) == {"pods", "logs", "nodes"} and not set(steps) & set(errors), (steps, errors)

    single = alert.labels.get("app")
    listed = list(dict.fromkeys(app for app in apps if app))[:20]
    expected = {
        "pods": (single, [Term("app", "=", (single or "",)), Term("tier", "=", ("web",))]),
        "nodes": (single, [Term("pool", "=", (single or "none",))]),
        "logs": (listed, [Term("app", "in", tuple(listed)), Term("tier", "!=", ("db",))]),
    }
    for step, (values, terms) in expected.items():
        name = "alerts.labels.app" if step == "logs" else "labels.app"
        given_values = values if isinstance(values, list) else [] if values is None else [values]
        if step == "nodes" and values in (None, ""):
            assert selector_terms(steps[step]) == terms, steps[step]  # the rule's own default
        elif not given_values:
            assert f"{name} is not set" in errors[step], errors
        elif all(is_label_value(v) for v in given_values):
            assert selector_terms(steps[step]) == terms, (step, steps[step])
        else:
            assert errors[step].startswith(f"{step}: {name}: "), errors[step]
            assert re.search(r"is not a Kubernetes label value|a Kubernetes label value at most 63", errors[step])


ATTACKS = [
    "api,tier!=x", "api,tier", "api!=x", "api=x", "api==x", "x in (a", "api) , (x", "api)", "(api", "api,", ",",
    "api web", " api", "api ", "api\nx", "api\ttier", "api\r", "!api", "-api", "api.", "_api", "api|web", "api>1",
    "a" * 64, "a" * 100, "\u0430pi", "\uff41pi", "api\u200b", "ap\u0456", "api\u00a0", "\u00e9", "",
]


@pytest.fixture(scope="module")
def selectors(tmp_path_factory: pytest.TempPathFactory) -> Rule:
    """A value among the rule's own terms, a list of the group's values, and a value with a default."""
    return one_rule(tmp_path_factory.mktemp("rules"), STEPS)


@pytest.mark.parametrize("app", ATTACKS)
def test_an_attacking_value_adds_no_term_alone_or_among_members(selectors: Rule, app: str) -> None:
    check_group(selectors, [app])
    check_group(selectors, ["api", app, "web"])


@pytest.mark.parametrize("app", ["api", "a" * 63, "api-7d9.v2_x", "A1", "9", "in", "notin"])
def test_label_values_are_selected_as_written(selectors: Rule, app: str) -> None:
    check_group(selectors, [app])
    steps, errors = rendered(selectors, {"app": app}, {"app": "web"}, {"app": app})
    assert errors == ["pods: labels.app is not set on this alert (add | default(\"...\") if optional)"]
    assert steps["logs"].params.selector == f"app in ({app},web),tier!=db"  # type: ignore[attr-defined]


def test_the_error_names_the_label_and_why(selectors: Rule) -> None:
    _, errors = rendered(selectors, {"app": "api,tier!=x"})
    assert errors == [
        "pods: labels.app: 'api,tier!=x' is not a Kubernetes label value (ASCII letters, digits, '-', '_' and '.',"
        " beginning and ending with a letter or digit)",
        "logs: alerts.labels.app: 'api,tier!=x' is not a Kubernetes label value (ASCII letters, digits, '-', '_'"
        " and '.', beginning and ending with a letter or digit)",
        "nodes: labels.app: 'api,tier!=x' is not a Kubernetes label value (ASCII letters, digits, '-', '_' and '.',"
        " beginning and ending with a letter or digit)"]
    _, errors = rendered(selectors, {"app": "a" * 70})
    assert errors[0] == f"pods: labels.app: {'a' * 63!r}... is 70 characters, a Kubernetes label value at most 63"


fragments = st.sampled_from([
    *"aZ09-_.,=!()<> \n\t|\"'/%:&", "in", "notin", " in (", "),(", "tier!=x", ",tier", "\u0430", "\uff10", "\u200b",
    "\u00e9", "\u0130", "api",
])
values = st.one_of(
    st.lists(fragments, max_size=6).map("".join),
    st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True),
    st.text(alphabet="ab.-", min_size=60, max_size=66),
    st.text(max_size=8),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(apps=st.lists(values, min_size=1, max_size=5))
def test_fuzzed_values_are_refused_or_leave_the_terms_as_written(selectors: Rule, apps: list[str]) -> None:
    check_group(selectors, apps)


@pytest.mark.parametrize(("selector", "message"), [
    ("app={{ labels.app }}", "{{ labels.app }} in a label selector must end with '| label_value'"),
    ("app={{ labels.app | label_value | lower }}", "must end with '| label_value'"),
    ('app={{ labels.app | default("x") }}', "must end with '| label_value'"),
    ('app in ({{ alerts.labels.app | join(",") }})',
     "in a label selector must apply '| label_value' to each value, as the last filter before join"),
    ('app in ({{ alerts.labels.app | join(",") | label_value }})', "to each value, as the last filter before join"),
    ('app in ({{ alerts.labels.app | label_value | lower | join(",") }})', "as the last filter before join"),
    ('app in ({{ alerts.labels.app | label_value | join(",") | upper }})', "nothing but default after join"),
])
@pytest.mark.parametrize("collector", ["kubernetes.pods", "kubernetes.logs", "kubernetes.pod_metrics",
                                       "kubernetes.nodes"])
def test_a_selector_template_without_label_value_does_not_load(tmp_path: Path, collector: str, selector: str,
                                                               message: str) -> None:
    namespace = "" if collector == "kubernetes.nodes" else "namespace: prod, "
    _, problems = load(tmp_path, f"""
rules:
  - name: pods
    match: ['alertname="X"']
    collectors: [{{type: {collector}, params: {{{namespace}selector: '{selector}'}}}}]
""")
    assert any("collectors.0.params.selector" in p and message in p for p in problems), problems


def test_responder_check_names_file_rule_and_field(tmp_path: Path) -> None:
    write(tmp_path, "targets:\n  kubernetes:\n    default: {url: http://127.0.0.1:1, token: {env: CHECK_KUBE_TOKEN}}\n"
                    "rules: {dirs: [rules]}\n",
          {"pods.yaml": """\
rules:
  - name: crashing-pods
    match: ['alertname="X"']
    collectors:
      - {type: kubernetes.pods, params: {namespace: prod, selector: 'app={{ labels.app | label_value }}'}}
      - {type: kubernetes.pods, params: {namespace: prod, selector: 'app={{ labels.app }}'}}
      - type: kubernetes.logs
        params: {namespace: prod, selector: 'app in ({{ alerts.labels.app | join(",") }})'}
"""})
    result = run_check(tmp_path, "--json", env={"CHECK_KUBE_TOKEN": "t"})
    assert result.returncode == 1, result.stderr
    problems = {p["key"]: p for p in json.loads(result.stdout)["problems"] if p["rule"]}
    assert set(problems) == {"collectors.1.params.selector", "collectors.2.params.selector"}, problems
    single, listed = problems["collectors.1.params.selector"], problems["collectors.2.params.selector"]
    assert (single["file"], single["rule"], single["line"]) == (str(tmp_path / "rules" / "pods.yaml"),
                                                                 "crashing-pods", 6)
    assert "{{ labels.app }} in a label selector must end with '| label_value'" in single["message"]
    assert (listed["rule"], listed["line"]) == ("crashing-pods", 8)
    assert "must apply '| label_value' to each value" in listed["message"]


async def test_the_api_server_receives_the_rules_terms_or_no_request(selectors: Rule) -> None:
    async with FakeKubeAPI() as kube:
        for name, labels in {"api-1": {"app": "api", "tier": "web"}, "web-1": {"app": "web", "tier": "web"},
                             "api-db-1": {"app": "api", "tier": "db"}, "billing-1": {"app": "billing"},
                             "admin-1": {"app": "admin", "tier": "web"}}.items():
            kube.add_pod("prod", name, labels=labels, containers=[container_status("main", "img:1")])
            kube.logs[("prod", name, "main", False)] = f"log of {name}"
        config = config_with(**{"targets.kubernetes": {"prod": kube.target()}})

        # A group of two deployments: one list request, with exactly the rule's two terms.
        alert, members = group({"app": "api"}, {"app": "web"})
        collectors, _, errors = render_steps(selectors, alert, members)
        assert [str(e) for e in errors] == [
            'pods: labels.app is not set on this alert (add | default("...") if optional)']
        evidence = {e.step: e for e in await run_steps(config, *collectors)}
        [listed] = [r for r in kube.requests if r.path == "/api/v1/namespaces/prod/pods"]
        assert listed.query["labelSelector"] == "app in (api,web),tier!=db"
        assert sorted(p["pod"] for p in evidence["logs"].payload["pods"]) == ["api-1", "web-1"]

        # Hostile values: the API server is asked nothing with them, and each refused step says why.
        for hostile in ("api,tier!=x", "api) , (x", "api),tier in (web", "admin\n", "\u0430pi"):
            refusal = (f"{hostile!r} is not a Kubernetes label value (ASCII letters, digits, '-', '_' and '.',"
                       " beginning and ending with a letter or digit)")
            for apps, refused, nodes in (([hostile], ["pods", "logs", "nodes"], None),
                                         ([hostile, "web"], ["logs"], "pool=none")):
                kube.requests.clear()
                alert, members = group(*({"app": app} for app in apps))
                collectors, _, errors = render_steps(selectors, alert, members)
                await run_steps(config, *collectors)
                assert [(r.path, r.query.get("labelSelector")) for r in kube.requests] == \
                    ([("/api/v1/nodes", nodes)] if nodes else [])
                assert [str(e) for e in errors if "label value" in str(e)] == [
                    f"{step}: {'alerts.' if step == 'logs' else ''}labels.app: {refusal}" for step in refused]
