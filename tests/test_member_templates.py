"""`alerts.*` in templates: a plain step reads the values of the group's firing members as one joined
value (a PromQL regex over a deployment's pods, a list in a path). What a hostile member value can do to
a query, a regex, a path, a Redis pattern or a Kubernetes name: nothing but be rejected or stay data."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.support.plugins  # noqa: F401  (registers test.sleep)
from responder.models import Alert, AlertStatus, common_labels
from responder.rules.engine import render_steps
from responder.rules.model import Rule
from responder.rules.templating import Members, TemplateError, alert_context, check_template, render
from responder.steps import RenderedStep
from tests.test_typed_params import load


def group(*pods: dict[str, str]) -> tuple[Alert, list[Alert]]:
    """The alert standing for a group (the labels its members share) and its firing members."""
    members = [Alert("alertmanager", AlertStatus.FIRING, f"fp{i}", 1.0,
                     {"alertname": "PodCrashLooping", "namespace": "prod", "deployment": "api", **labels},
                     {"summary": f"member {i}"})
               for i, labels in enumerate(pods)]
    shared = common_labels([m.labels for m in members])
    return Alert("alertmanager", AlertStatus.FIRING, "group", 1.0, shared), members


def rendered(rule: Rule, *pods: dict[str, str]) -> tuple[dict[str, RenderedStep], list[str]]:
    alert, members = group(*pods)
    collectors, mitigations, errors = render_steps(rule, alert, members)
    return {s.id: s for s in collectors + mitigations}, [str(e) for e in errors]


def one_rule(tmp_path: Path, steps: str) -> Rule:
    [rule], problems = load(tmp_path, f"""
rules:
  - name: pods
    match: ['alertname="PodCrashLooping"']
    group_by: [namespace, deployment]
{steps}""")
    assert not problems, problems
    return rule


CPU_QUERY = ('sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="{{ labels.namespace | promql }}",'
             ' pod=~"{{ alerts.labels.pod | regex_escape | join("|") | promql }}"}[5m]))')


def test_one_query_over_the_pods_of_a_group_in_member_order_without_repeats_or_gaps(tmp_path: Path) -> None:
    rule = one_rule(tmp_path, f"""
    collectors:
      - {{id: cpu, type: prometheus.query, params: {{target: main, query: '{CPU_QUERY}'}}}}
      - id: names
        type: test.sleep
        params:
          seconds: 0
          label: >-
            {{{{ alerts.labels.pod | upper | join(", ") }}}} / {{{{ alerts.labels.pod | join(", ") | upper }}}}
            / {{{{ alerts.annotations.summary | join(";") }}}} / {{{{ alerts.alert.fingerprint | join(" ") }}}}
""")
    steps, errors = rendered(rule, {"pod": "api-7d9-x2"}, {"pod": "api-7d9-q4"}, {"pod": "api-7d9-x2"}, {},
                             {"pod": ""}, {"pod": "api.7d9"})
    assert errors == []
    # A member without the label (or with it empty) is skipped; a pod alerting twice is listed once.
    assert steps["cpu"].params.query == (  # type: ignore[attr-defined]
        'sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="prod",'
        ' pod=~"api\\\\-7d9\\\\-x2|api\\\\-7d9\\\\-q4|api\\\\.7d9"}[5m]))')
    assert steps["names"].params.label == (  # type: ignore[attr-defined]
        "API-7D9-X2, API-7D9-Q4, API.7D9 / API-7D9-X2, API-7D9-Q4, API.7D9"
        " / member 0;member 1;member 2;member 3;member 4;member 5 / fp0 fp1 fp2 fp3 fp4 fp5")


def test_filters_before_join_apply_to_each_value_after_it_to_the_joined_one() -> None:
    members = Members([alert_context({"pod": pod}, {}, {}) for pod in ("a.b", "A.B", "c")], dict)
    assert render('{{ alerts.labels.pod | regex_escape | join("|") }}', {}, members=members) == "a\\.b|A\\.B|c"
    assert render('{{ alerts.labels.pod | join("|") | regex_escape }}', {}, members=members) == "a\\.b\\|A\\.B\\|c"
    # Values equal once filtered are one value.
    assert render('{{ alerts.labels.pod | lower | join(",") }}', {}, members=members) == "a.b,c"
    assert render("{{ alerts.labels.pod | join('') }}", {}, members=members) == "a.bA.Bc"


def test_an_empty_list_takes_its_default_or_is_a_missing_value() -> None:
    members = Members([alert_context({"pod": "a"}, {}, {}), alert_context({}, {}, {})], dict)
    assert render('{{ alerts.labels.node | join(",") | default("any") }}', {}, members=members) == "any"
    assert render('{{ alerts.labels.pod | join(",") | default("any") }}', {}, members=members) == "a"
    with pytest.raises(TemplateError, match=r"alerts\.labels\.node is not set on any firing member"):
        render('{{ alerts.labels.node | join(",") }}', {}, members=members)
    with pytest.raises(TemplateError, match=r"alerts\.labels\.pod is not set on any firing member"):
        render('{{ alerts.labels.pod | join(",") }}', {"labels": {"pod": "not a member"}})


def test_a_list_holds_at_most_max_members_distinct_values(tmp_path: Path) -> None:
    rule = one_rule(tmp_path, """
    collectors:
      - {id: few, type: test.sleep, max_members: 3, params: {seconds: 0, label: '{{ alerts.labels.pod | join(",") }}'}}
      - {id: many, type: test.sleep, params: {seconds: 0, label: '{{ alerts.labels.pod | join(",") }}'}}
""")
    pods = [{"pod": "p0"}, {"pod": "p0"}, {"pod": "p1"}, {}, {"pod": "p2"}] + [{"pod": f"p{n}"} for n in range(3, 40)]
    steps, errors = rendered(rule, *pods)
    assert errors == []
    # Repeats and members without the label do not count against the cap: the first three pods are named.
    assert steps["few"].params.label == "p0,p1,p2"  # type: ignore[attr-defined]
    assert steps["many"].params.label == ",".join(f"p{n}" for n in range(20))  # type: ignore[attr-defined]


def test_a_for_each_step_sees_the_same_group_list(tmp_path: Path) -> None:
    rule = one_rule(tmp_path, """
    collectors:
      - id: each
        type: test.sleep
        for_each: alerts
        params: {seconds: 0, label: '{{ labels.pod }} of {{ alerts.labels.pod | join(",") }}'}
""")
    alert, members = group({"pod": "a"}, {"pod": "b"})
    collectors, _, errors = render_steps(rule, alert, members)
    assert errors == [] and [c.params.label for c in collectors] == ["a of a,b", "b of a,b"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("template", "message"), [
    ("{{ alerts.labels.pod }}", "is a list (one value per firing member): join it"),
    ("{{ alerts.labels.pod | promql }}", "is a list"),
    ('{{ alerts.labels.pod | default("x") | join(",") }}', "put it after join"),
    ('{{ labels.pod | join(",") }}', "join applies once, to a list of the group's members"),
    ('{{ alerts.labels.pod | join(",") | join(",") }}', "join applies once"),
    ("{{ alerts.labels.pod | join }}", 'join needs a quoted value: join("x")'),
    ("{{ alerts.pod | join(',') }}", "unsupported template expression"),
    ("{{ alerts | join(',') }}", "unsupported template expression"),
    ("{{ alerts.alerts.labels.pod | join(',') }}", "unsupported template expression"),
    ("{{ alerts.labels.pod | join(',') | count }}", "unknown template filter 'count'"),
])
def test_list_expressions_that_do_not_load(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        check_template(template)


# --- hostile member values, per destination ----------------------------------------------------------------

hostile = st.lists(st.sampled_from([*list("ab-._|\\\"'`{}()[]*?^$+/%~.#&=:;, \n\r\t\x00é"), "..", "%2e", "%25"]),
                   max_size=8).map("".join)
pod_lists = st.lists(hostile, min_size=1, max_size=6)


def promql_literal(text: str, start: int) -> tuple[str, int]:
    """The value of the PromQL string literal opening at text[start], and the index after it; only the
    escapes `promql` writes are accepted, so anything else fails the test."""
    quote, value, index = text[start], [], start + 1
    while text[index] != quote:
        char = text[index]
        assert char not in "\n\r", "a raw line break ends a PromQL string with an error"
        if char == "\\":
            if text[index + 1] == "\\":
                value.append("\\")
                index += 2
                continue
            assert text[index + 1] == "x", text[index:]
            value.append(chr(int(text[index + 2:index + 4], 16)))
            index += 4
            continue
        value.append(char)
        index += 1
    return "".join(value), index + 1


def distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


DESTINATIONS = """
    collectors:
      - id: dq
        type: prometheus.query
        params:
          target: main
          query: |-
            up{pod=~"{{ alerts.labels.pod | regex_escape | join("|") | promql }}",job="j"}
      - id: sq                         # joined with the literal's own quote
        type: prometheus.query
        params:
          target: main
          query: |-
            up{pod='{{ alerts.labels.pod | join("'") | promql }}',job='j'}
      - id: path
        type: http.check
        params: {target: app, path: '/pods/{{ alerts.labels.pod | join(",") }}/logs'}
    mitigations:
      - id: flush
        type: redis.delete_keys
        params: {target: cache, pattern: 'cache:{{ alerts.labels.pod | join("|") }}:*'}
      - id: restart
        type: kubernetes.rollout_restart
        params: {namespace: prod, name: '{{ alerts.labels.pod | lower | join("-") }}'}
"""


@pytest.fixture(scope="module")
def destinations(tmp_path_factory: pytest.TempPathFactory) -> Rule:
    return one_rule(tmp_path_factory.mktemp("rules"), DESTINATIONS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pods=pod_lists)
def test_hostile_pods_stay_inside_their_literal_regex_path_and_pattern(destinations: Rule, pods: list[str]) -> None:
    steps, errors = rendered(destinations, *({"pod": p} for p in pods))  # raises nothing: errors are recorded
    values = distinct(pods)
    if not values:
        assert {e.split(":")[0] for e in errors} == {"dq", "sq", "path", "flush", "restart"}
        assert all("alerts.labels.pod is not set on any firing member" in e for e in errors), errors
        return
    # PromQL, double-quoted regex: the literal ends where the rule's does, and matches exactly the pods.
    query = steps["dq"].params.query  # type: ignore[attr-defined]
    regex, end = promql_literal(query, len('up{pod=~'))
    assert query[end:] == ',job="j"}'
    assert all(re.fullmatch(regex, v, re.DOTALL) for v in values)
    for other in ("", "x", values[0] + "x", "|".join(values) + "|", ".*"):
        assert (re.fullmatch(regex, other, re.DOTALL) is not None) == (other in values), (regex, other)
    # Single-quoted, joined with a separator that is itself a quote: still one literal, and the exact string.
    query = steps["sq"].params.query  # type: ignore[attr-defined]
    literal, end = promql_literal(query, len("up{pod="))
    assert (literal, query[end:]) == ("'".join(values), ",job='j'}")
    # A URL path: one percent-encoded segment between /pods/ and /logs, or refused when it would leave it.
    if "path" in steps:
        path = steps["path"].params.path  # type: ignore[attr-defined]
        segments = path.split("/")
        assert segments[:2] == ["", "pods"] and segments[-1] == "logs" and len(segments) == 4, path
        assert unquote(segments[2]) == ",".join(values)
    else:
        assert any(e.startswith("path: rendered parameters are invalid: path:") for e in errors), errors
    # A Redis pattern: the rule's trailing `*` is the only wildcard.
    pattern = steps["flush"].params.pattern if "flush" in steps else None  # type: ignore[attr-defined]
    if pattern is None:  # refused: no 3-character literal prefix or a space
        assert any(e.startswith("flush:") for e in errors), errors
    else:
        middle = pattern[len("cache:"):-len(":*")]
        assert re.sub(r"\\(.)", "", middle, flags=re.DOTALL).count("*") == 0
        assert re.sub(r"\\(.)", r"\1", middle, flags=re.DOTALL) == "|".join(values)
        assert not re.search(r"(?<!\\)(?:\\\\)*[?\[\]^]", middle)
    # A Kubernetes name: valid as a whole, or not acted on at all.
    if "restart" in steps:
        name = steps["restart"].params.name  # type: ignore[attr-defined]
        assert name == "-".join(distinct([p.lower() for p in pods]))
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name)
    else:
        assert any(e.startswith("restart: rendered parameters are invalid: name") for e in errors), errors


lookups = st.sampled_from(["labels.pod", "annotations.pod", "alert.pod", "labels.node"])
per_value = st.lists(st.sampled_from(["lower", "upper", "promql", "regex_escape", "label_value"]), max_size=2)
separators = st.sampled_from(['join(",")', "join('|')", 'join("}")', 'join("\\"")', "join('')"])
defaults = st.lists(st.sampled_from(['default("x")', "default('a|b')"]), max_size=1)
heads = st.sampled_from([
    "alerts", "labels", "alerts.pod", "alerts.alerts.labels.pod", "''.__class__", "labels.__class__.__mro__",
    "labels['pod']", "labels.pod.upper()", "cycler.__init__.__globals__.os", "alerts.labels.pod[0]", "self", "",
])
filters = st.sampled_from([
    "lower", "promql", 'join(",")', 'default("x")', "count", "attr('__class__')", "join", "default", "__class__",
    "lower()", 'join(",", "x")', "join(x)", 'default("x"', "", "safe", "e", "format('%s')",
])
junk = st.lists(st.sampled_from([*"|.()[]{}'\" _%0x", "{{", "}}", "{%", "__"]), max_size=3).map("".join)


@st.composite
def expressions(draw: st.DrawFn) -> str:
    """A well-formed lookup or list with filters, or a random head and filters; a third of them with a few
    syntax characters thrown in."""
    if draw(st.booleans()):
        lookup = draw(lookups)
        parts = [*draw(per_value), *draw(defaults)]
        if draw(st.booleans()):
            lookup = "alerts." + lookup
            parts = [*draw(per_value), draw(separators), *parts]
    else:
        lookup, parts = draw(heads), draw(st.lists(filters, max_size=4))
    body = " | ".join([lookup, *parts])
    if draw(st.integers(0, 2)) == 0:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(junk) + body[at:]
    return body


GRAMMAR = re.compile(r"""\s*(alerts\.)?(labels|annotations|alert)\.[A-Za-z_]\w*\s*"""
                     r"""(\|\s*(lower|upper|promql|regex_escape|label_value|(default|join)\(\s*("([^"\\]|\\.)*"|'([^'\\]|\\.)*')\s*\))\s*)*""")


@settings(max_examples=1500, deadline=None)
@given(expressions())
def test_the_template_language_accepts_lookups_and_filters_and_nothing_else(body: str) -> None:
    template = "{{" + body + "}}"
    context = {"labels": {"pod": "p"}, "annotations": {"pod": "q"}, "alert": {"pod": "r"}}
    members = Members([context, context], dict)
    try:
        check_template(template)
    except TemplateError:
        with pytest.raises(TemplateError):
            render(template, context, members=members)
        return
    for expression in re.findall(r"\{\{(.*?)\}\}", template, re.DOTALL):
        assert GRAMMAR.fullmatch(expression), template
    try:
        output = render(template, context, members=members)
    except TemplateError as exc:
        assert "is not set" in str(exc)
        return
    assert "<" not in output, output  # no Python object ever reaches the output


def test_member_lookups_cost_no_more_than_the_cap(tmp_path: Path) -> None:
    rule = one_rule(tmp_path, f"""
    collectors:
      - {{id: cpu, type: prometheus.query, max_members: 50, params: {{target: main, query: '{CPU_QUERY}'}}}}
""")
    pods = [{"pod": f"api-{n}"} for n in range(5000)]
    started = time.process_time()
    steps, errors = rendered(rule, *pods)
    elapsed = time.process_time() - started
    assert errors == [] and steps["cpu"].params.query.count("|") == 49  # type: ignore[attr-defined]
    assert elapsed < 2.0, elapsed
