"""What RBAC the code needs, read from its source, and what RBAC a set of manifests grants.

The code side: every attribute in the scanned source named like a kubernetes-asyncio API method
(`list_namespaced_pod`, `patch_namespaced_deployment_scale`, `list_cluster_custom_object`, ...) is a call the
ServiceAccount must be allowed to make. Its verb comes from the method's prefix (Kubernetes' naming: list,
read -> get, patch, delete, create, replace -> update); its API group and resource come from the REST path
kubernetes-asyncio itself calls for that method (`/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale`
-> apps, deployments/scale), and for custom objects from the `group=` and `plural=` arguments of the call.
So a call added anywhere in the code is checked without touching this file, and a name this file cannot
map is reported as such instead of being ignored.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as kube_client

# Kubernetes' method naming: the prefix says the verb. `read` is RBAC's `get`, `replace` is `update`.
VERB_PREFIXES = {
    "list": "list",
    "read": "get",
    "get": "get",  # custom objects: get_namespaced_custom_object, get_cluster_custom_object
    "patch": "patch",
    "delete_collection": "deletecollection",
    "delete": "delete",
    "create": "create",
    "replace": "update",
}
# Prefixes kubernetes-asyncio uses that need RBAC this mapping does not express (exec/attach/proxy are
# `create` on a subresource; watch_ functions are deprecated): a call with one fails the check.
UNSUPPORTED_PREFIXES = ("connect", "watch")
# Methods that read discovery documents (no RBAC resource; every authenticated user may read them).
_DISCOVERY = re.compile(r"^get_(api_group|api_resources|api_versions|code|service_account_issuer_)")
_LOOKS_LIKE_API = re.compile(
    r"^(list|read|get|patch|delete|create|replace|connect|watch)_\w*(namespaced_|_for_all_namespaces|custom_object)\w*$"
)
_CALL_API = re.compile(r"call_api\(\s*'([^']+)',\s*'([A-Z]+)'")


class UnknownApiCall(Exception):
    """A call whose RBAC this module cannot work out: the message names the file, line and method."""


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str
    verb: str
    namespaced: bool

    def __str__(self) -> str:
        return f"{self.group or 'core'}/{self.resource}:{self.verb}{'' if self.namespaced else ' (cluster)'}"


@dataclass(frozen=True)
class ApiCall:
    method: str
    file: Path
    line: int
    # Literal string arguments by parameter name (group, plural, ...); None where not a literal.
    arguments: dict[str, str | None] = field(default_factory=dict, compare=False, hash=False)
    # API classes named in the scanned sources (CoreV1Api, ...), to tell same-named methods apart.
    classes: frozenset[str] = field(default_factory=frozenset, compare=False, hash=False)
    watch: bool = False

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.method}"


@cache
def api_classes() -> dict[str, type]:
    return {name: cls for name, cls in vars(kube_client).items()
            if inspect.isclass(cls) and name.endswith("Api") and name != "ApiClient"}


@cache
def api_method_names() -> frozenset[str]:
    return frozenset(name for cls in api_classes().values() for name in vars(cls)
                     if not name.startswith("_") and not name.endswith("_with_http_info"))


@cache
def _rest_endpoints(method: str) -> tuple[tuple[str, str, str], ...]:
    """(API class, path, HTTP method) for every API class that has `method`."""
    found = []
    for class_name, cls in api_classes().items():
        impl = getattr(cls, f"{method}_with_http_info", None)
        if impl is None:
            continue
        match = _CALL_API.search(inspect.getsource(impl))
        if match:
            found.append((class_name, match.group(1), match.group(2)))
    return tuple(found)


def _verb(call: ApiCall) -> str:
    if call.method.startswith(UNSUPPORTED_PREFIXES):
        raise UnknownApiCall(f"{call.where()}: no RBAC mapping for {call.method.split('_')[0]}_ methods; "
                             "add one to tests/support/kube_rbac.py and a rule to the chart")
    for prefix, verb in VERB_PREFIXES.items():
        if call.method.startswith(prefix + "_"):
            return verb
    raise UnknownApiCall(f"{call.where()}: cannot tell the RBAC verb from the method name")


def _path_permission(call: ApiCall, path: str, verb: str) -> Permission | None:
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"]:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if group == "{group}":
        group = _literal(call, "group")
    if not rest:
        return None  # a discovery document
    namespaced = len(rest) >= 2 and rest[0] == "namespaces" and rest[1] == "{namespace}"
    if namespaced:
        rest = rest[2:]
    if not rest:
        return Permission("", "namespaces", verb, False)
    resource = rest[0]
    if resource == "{plural}":
        resource = _literal(call, "plural")
    if len(rest) >= 3:
        resource += "/" + rest[2]
    return Permission(group, resource, verb, namespaced)


def _literal(call: ApiCall, name: str) -> str:
    value = call.arguments.get(name)
    if value is None:
        raise UnknownApiCall(f"{call.where()}: pass {name}= as a string literal (or a module constant) "
                             "so the RBAC it needs can be checked")
    return value


def required_permissions(call: ApiCall) -> set[Permission]:
    """The permissions one call needs. Raises UnknownApiCall when that cannot be worked out."""
    if _DISCOVERY.match(call.method):
        return set()
    endpoints = _rest_endpoints(call.method)
    if not endpoints:
        raise UnknownApiCall(f"{call.where()}: not a kubernetes-asyncio API method")
    verb = _verb(call)
    # Methods of the same name on several API classes (core and events.k8s.io events): the classes the
    # code names decide; when it names none of them, all are required.
    named = [e for e in endpoints if e[0] in call.classes] or list(endpoints)
    needed: set[Permission] = set()
    for _class, path, _http in named:
        permission = _path_permission(call, path, verb)
        if permission is None:
            continue
        needed.add(permission)
        if call.watch and verb == "list":
            needed.add(Permission(permission.group, permission.resource, "watch", permission.namespaced))
    return needed


def scan_source(paths: Iterable[Path]) -> list[ApiCall]:
    """Every Kubernetes API method the given Python files (or directories of them) refer to."""
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py")))
    trees = {f: ast.parse(f.read_text(encoding="utf-8"), str(f)) for f in files}
    classes = frozenset(
        name for tree in trees.values() for node in ast.walk(tree)
        for name in [node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""]
        if name in api_classes()
    )
    known = api_method_names()
    calls: list[ApiCall] = []
    for path, tree in trees.items():
        constants = _module_constants(tree)
        all_calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
        calls_by_func = {id(node.func): node for node in all_calls}
        # `Watch().stream(core.list_namespaced_pod, ...)`: the method is handed over, not called.
        streamed = {id(arg) for node in all_calls if isinstance(node.func, ast.Attribute)
                    and node.func.attr == "stream" for arg in node.args}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            if node.attr not in known and not _LOOKS_LIKE_API.match(node.attr):
                continue
            call_node = calls_by_func.get(id(node))
            arguments = _arguments(node.attr, call_node, constants) if call_node else {}
            watch = id(node) in streamed or (call_node is not None and any(
                k.arg == "watch" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in call_node.keywords))
            calls.append(ApiCall(node.attr, path, node.lineno, arguments, classes, watch))
    return calls


def _module_constants(tree: ast.Module) -> dict[str, str]:
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
    return constants


def _arguments(method: str, call: ast.Call, constants: dict[str, str]) -> dict[str, str | None]:
    def literal(value: ast.expr) -> str | None:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
        if isinstance(value, ast.Name):
            return constants.get(value.id)
        return None

    names: list[str] = []
    for cls in api_classes().values():
        if method in vars(cls):
            names = [p for p in inspect.signature(getattr(cls, method)).parameters if p != "self"]
            break
    found = {name: literal(arg) for name, arg in zip(names, call.args, strict=False)}
    found.update({k.arg: literal(k.value) for k in call.keywords if k.arg})
    return found


# ---- the granted side: RBAC objects in rendered manifests --------------------------------------------


@dataclass(frozen=True, order=True)
class Grant:
    """One permission held by the ServiceAccount, with where it holds: '*' for every namespace."""

    group: str
    resource: str
    verb: str
    scope: str


def granted(manifests: list[dict[str, Any]], service_account: str, sa_namespace: str) -> set[Grant]:
    roles = {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m.get("rules") or []
             for m in manifests if m["kind"] in ("Role", "ClusterRole")}
    grants: set[Grant] = set()
    for binding in manifests:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                   and s.get("namespace") == sa_namespace for s in binding.get("subjects") or []):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role_ns = namespace if ref["kind"] == "Role" else None
        rules = roles.get((ref["kind"], role_ns, ref["name"]))
        if rules is None:
            raise AssertionError(f"{binding['kind']} {binding['metadata']['name']} refers to a missing "
                                 f"{ref['kind']} {ref['name']}")
        scope = namespace or "*"
        for rule in rules:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        grants.add(Grant(group, resource, verb, scope))
    return grants


def allows(grants: set[Grant], permission: Permission, namespace: str = "*") -> bool:
    """Whether the grants allow `permission` in `namespace` ('*': in every namespace)."""
    scopes = {"*"} if namespace == "*" or not permission.namespaced else {"*", namespace}
    return any(Grant(permission.group, permission.resource, permission.verb, scope) in grants for scope in scopes)
