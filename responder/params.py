"""Parameter types shared by collectors and actions. A value rendered from alert labels must pass
these before it reaches an API call, a query or a command line."""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import posixpath
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin
from urllib.parse import quote, unquote, urlsplit

from pydantic import AfterValidator, BaseModel, StringConstraints
from yarl import URL

# RFC 1123 label: what Kubernetes requires of namespaces and most object names.
K8sName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253)
]
K8sNamespace = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]


def _selector(value: str) -> str:
    # Label selectors: keys, values and the few operators Kubernetes accepts; nothing else.
    term = r"!?[A-Za-z0-9./_-]+(\s*(==?|!=)\s*[A-Za-z0-9._-]*|\s+(in|notin)\s+\([A-Za-z0-9._,\s-]*\))?"
    if value and not re.fullmatch(rf"\s*{term}(\s*,\s*{term})*\s*", value):
        raise ValueError(f"not a Kubernetes label selector: {value!r}")
    return value


TargetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


# --- values rendered from an alert into a structured string -----------------------------------------
#
# A label is data. Where a parameter is a path, a query or a pattern, the type says how a value from the
# alert is written into it (`RenderAs`), so the value can never change the parameter's structure: it
# cannot leave the target's base path, end a PromQL string, or widen a Redis pattern.


@dataclass(frozen=True, slots=True)
class RenderAs:
    """How values from an alert are written into a parameter of this type.

    `escape` is applied by the renderer to every value substituted into the parameter. `filter` names
    the template filter each `{{ ... }}` must end with (optionally followed by `default(...)`); with
    `filter_each`, a list's filter is the last one before `join`, so it judges each value and not the
    rule's separator. `in_string_literal` says each must sit inside a quoted string. All are checked
    when rules load, so `responder check` refuses a rule that forgets them."""

    kind: str
    escape: Callable[[str], str] | None = None
    filter: str | None = None
    filter_each: bool = False
    in_string_literal: bool = False


def render_as(model: type[BaseModel], key: str) -> RenderAs | None:
    """How alert values are written into parameter `key` (its name or alias) of `model`, if it is typed."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return next((m for m in info.metadata if isinstance(m, RenderAs)), None) or _render_as_in(info.annotation)
    return None


def _render_as_in(annotation: Any) -> RenderAs | None:
    # An optional typed parameter (`LabelSelector | None`) keeps its type's metadata inside the union.
    if get_origin(annotation) is Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, RenderAs)), None)
    return next((kind for arg in get_args(annotation) if (kind := _render_as_in(arg)) is not None), None)


def promql_string(value: str) -> str:
    """`value` written inside a PromQL string literal, double- or single-quoted.

    Quotes and backticks become hex escapes (PromQL, like Go, accepts `\\x22` in both kinds of
    literal, whereas `\\'` is an error inside double quotes), so the value cannot end the literal
    whatever quote the rule used; control characters are escaped too."""
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif char in "\"'`" or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def redis_glob_literal(value: str) -> str:
    """`value` matched literally inside a Redis glob pattern: `*`, `?`, `[`, `]`, `^` and `\\` escaped."""
    return re.sub(r"([*?\[\]^\\])", r"\\\1", value)


def url_path_segment(value: str) -> str:
    """`value` as data inside a path or query: everything but letters, digits and `-._~` percent-encoded."""
    return quote(value, safe="-._~")


_PATH_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
_QUERY_CHARS = re.compile(r"[!-~]*")


def _url_path(value: str) -> str:
    """An absolute path (and query) under a target's URL. Checked decoded, the way the target will read
    it: no `.` or `..` segment, no backslash, no `//`, no control character, no fragment."""
    if not value:
        return value
    path, _, query = value.partition("?")
    if not path.startswith("/") or not _PATH_CHARS.fullmatch(path) or not _QUERY_CHARS.fullmatch(query):
        raise ValueError(f"not an absolute URL path: {value[:200]!r}")
    decoded = path
    # Decoded until stable: a proxy in front of the target may decode once more than the target.
    for _ in range(4):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    if decoded != unquote(decoded):
        raise ValueError(f"path is percent-encoded too many times: {value[:200]!r}")
    segments = decoded.split("/")[1:]
    if any(s in (".", "..") for s in segments) or "\\" in decoded or "//" in decoded or "#" in decoded \
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise ValueError(f"path must stay under the target's URL (no '.', '..', '//', '\\\\' or '#'): {value[:200]!r}")
    return value


def under_base(base_url: str, path: str) -> URL:
    """The target's URL with `path` appended, refused unless its normalized path stays under the target's.
    Marked as already encoded, so the client sends exactly the path that was checked."""
    joined = base_url.rstrip("/") + path if path else base_url
    base_path = urlsplit(base_url).path.rstrip("/") + "/"
    normalized = posixpath.normpath(unquote(urlsplit(joined).path) or "/")
    if not (normalized + "/").startswith(base_path):
        raise ValueError(f"{path!r} leaves the target's base path {base_path!r}")
    return URL(joined, encoded=True)


# A URL path (and query) appended to a target's URL; values from the alert are percent-encoded into it.
UrlPath = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_url_path),
                    RenderAs("url path", escape=url_path_segment)]
# A PromQL query; values from the alert only inside string literals, through `| promql`.
PromQLQuery = Annotated[str, StringConstraints(min_length=1, max_length=4000),
                        RenderAs("PromQL query", filter="promql", in_string_literal=True)]
# A Redis glob pattern; values from the alert are matched literally (their `*?[]` escaped).
RedisGlob = Annotated[str, StringConstraints(max_length=256), RenderAs("Redis pattern", escape=redis_glob_literal)]


_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def label_value(value: str) -> str:
    """`value` unchanged if Kubernetes accepts it as a label value, else ValueError: in a selector such a
    value is one value, never a `,`, an operator, a parenthesis or a space that would add or change terms."""
    if len(value) > 63:
        raise ValueError(f"{value[:63]!r}... is {len(value)} characters, a Kubernetes label value at most 63")
    if not _LABEL_VALUE.fullmatch(value):
        raise ValueError(f"{value!r} is not a Kubernetes label value (ASCII letters, digits, '-', '_' and '.',"
                         " beginning and ending with a letter or digit)")
    return value


# A Kubernetes label selector; values from the alert only through `| label_value`, which refuses any value
# that is not a label value (for a list, on each value before join: the separator is the rule's).
LabelSelector = Annotated[str, AfterValidator(_selector),
                          RenderAs("label selector", filter="label_value", filter_each=True)]


# --- hosts named by an alert --------------------------------------------------------------------------


class HostRefused(PermissionError):
    """A host or address a collector may not contact (see collectors.network)."""


async def allowed_addresses(host: str, port: int, allow_hosts: list[str], allow_private: list[str],
                            timeout: float) -> list[str]:
    """The addresses of `host` a collector may connect to, or HostRefused. The name must match an
    allow_hosts pattern; every address it resolves to must be public or inside allow_private (so a name
    cannot point at the metadata service, loopback or the cluster's own network unless listed). Callers
    connect to these addresses, not to the name, so a second DNS answer cannot change the decision."""
    name = host.strip("[]").lower().rstrip(".")
    if not any(fnmatch.fnmatchcase(candidate, pattern.lower()) for pattern in allow_hosts
               for candidate in (name, f"{name}:{port}")):
        raise HostRefused(f"{name}:{port} is not in collectors.network.allow_hosts")
    networks = [ipaddress.ip_network(n, strict=False) for n in allow_private]
    try:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        raise HostRefused(f"{name} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global and not any(ip in network for network in networks):
            raise HostRefused(f"{name} resolves to {ip}, a non-public address not in collectors.network.allow_private")
    return addresses
