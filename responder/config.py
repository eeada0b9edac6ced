"""Typed configuration, validated once at load time.

Every later layer receives these models, never raw YAML. Errors name the file and the dotted key.
Secrets are referenced (`{env: NAME}` or `{file: PATH}`), resolved here, and never printed.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from responder.problems import Problem, validation_messages
from responder.yamlsource import YamlDocument, YamlError, parse_yaml

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """'250ms', '5s', '2m', '1h', '1d' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 2m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 5s, 2m or 1h, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigError(Exception):
    """Configuration problems, each with file, line and key, already phrased for a person."""

    def __init__(self, problems: list[Problem], partial: Config | None = None,
                 broken: frozenset[str] = frozenset()) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems
        # What could be read despite the problems, so `check` can go on to the rules: the valid
        # top-level sections, with defaults for the `broken` ones.
        self.partial = partial
        self.broken = broken


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret:
    """A resolved secret value that does not leak through repr, logs or error messages."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__


class SecretRef(Strict):
    """Where a secret comes from: an environment variable or a file (first line, stripped)."""

    env: str | None = None
    file: Path | None = None
    # A value written in the config itself; only `PlainUrlOrSecret` makes one, from a URL without a password.
    _plain: str | None = PrivateAttr(default=None)
    # The value as last read (at load, then by `reload`): request paths never read the file. A 1-tuple, so
    # that "read, and empty" (None,) differs from "never read" None.
    _read: tuple[str | None] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None) and self._plain is None:
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    @classmethod
    def plain(cls, value: str) -> SecretRef:
        ref = cls.model_construct()
        ref._plain = value
        return ref

    @property
    def is_plain(self) -> bool:
        return self._plain is not None

    def describe(self) -> str:
        """Where the value comes from, for messages (never the value)."""
        if self._plain is not None:
            return "the config"
        return f"variable {self.env}" if self.env is not None else f"file {self.file}"

    def resolve(self) -> Secret | None:
        """The secret as last read (it is read at load), or None when the variable is unset or the file
        empty. A missing file is an error."""
        if self._plain is not None:
            return Secret(self._plain, "the config")
        if self._read is None:
            self.reload()
        assert self._read is not None
        (value,) = self._read
        return Secret(value, self.describe()) if value else None

    def reload(self) -> bool:
        """Read the value again from its variable or file (a rotated secret); True when it changed. A file
        that cannot be read raises ValueError and the value read before stays."""
        if self._plain is not None:
            return False
        if self.env is not None:
            value = os.environ.get(self.env, "")
        else:
            assert self.file is not None
            try:
                value = self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"cannot read secret file {self.file}: {exc.strerror}") from exc
        changed = self._read is not None and self._read != (value or None,)
        self._read = (value or None,)
        return changed


def _url_without_password(value: Any) -> Any:
    """A URL written as plain text is fine when it holds no password (`redis://127.0.0.1:6379/0`)."""
    if not isinstance(value, str):
        return value
    try:
        password = urlsplit(value).password
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if password:
        raise ValueError("this URL carries a password: write {env: NAME} (or {file: PATH}) and put the URL there")
    return SecretRef.plain(value)


# A connection URL: plain text when it carries no password, else a secret reference.
PlainUrlOrSecret = Annotated[SecretRef, BeforeValidator(_url_without_password)]


class BasicAuthConfig(Strict):
    username: str
    password: SecretRef


class IntakeAuthConfig(Strict):
    bearer_token: SecretRef | None = None
    basic: BasicAuthConfig | None = None
    # HMAC secrets for senders that sign the body (PagerDuty V3, Grafana); several allow rotation.
    signing_secrets: list[SecretRef] = Field(default_factory=list)
    # What to do when no credential is configured (or its variable is unset): refusing everything is
    # the default; accepting loopback-only or anyone must be written down, and `check` warns about it.
    unauthenticated: Literal["reject", "loopback", "any"] = "reject"


class IntakeConfig(Strict):
    enabled: bool = True
    # The `targets.alertmanager` entry that sends to this intake (for silences from Slack); without it, the
    # target whose url or external_url is the delivery's externalURL.
    alertmanager: str | None = None
    auth: IntakeAuthConfig = IntakeAuthConfig()
    # Intake-specific settings (signing secrets, ...), validated by the intake class itself.
    options: dict[str, Any] = Field(default_factory=dict)


class IntakeLimits(Strict):
    """What one webhook delivery may carry; anything beyond is refused with a 400 naming the field, and
    nothing of that delivery is stored. The defaults sit far above what Alertmanager, Grafana and
    PagerDuty send, and far below what would hurt the store, the pipeline or Slack."""

    max_alerts: int = Field(default=1000, gt=0)
    max_labels: int = Field(default=100, gt=0)
    max_annotations: int = Field(default=100, gt=0)
    # Label and annotation names, fingerprints and vendor ids (they end up in indexes and keys).
    max_name_bytes: int = Field(default=256, gt=0)
    max_label_value_bytes: int = Field(default=4096, gt=0)
    max_annotation_value_bytes: int = Field(default=65536, gt=0)
    # Any other text kept with an alert: URLs, group key, receiver, vendor extras.
    max_text_bytes: int = Field(default=8192, gt=0)
    # startsAt later than now plus this is refused (clock skew, or an alert that would poison every
    # later step); earlier than 1970 too. Times must carry a zone.
    max_future: Duration = 86400.0


class ServerConfig(Strict):
    listen: str = "127.0.0.1:8080"
    max_body_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    # Seconds to wait for a slow client to send its request before giving up on it.
    read_timeout: Duration = 30.0
    # Time in-flight jobs get to finish on SIGTERM; keep it below Kubernetes' terminationGracePeriod.
    drain_seconds: Duration = 20.0
    api_token: SecretRef | None = None
    # uvloop: libuv's event loop, measured in docs/benchmarks.md; asyncio: the standard library's.
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    # Daemon processes sharing the listening port (SO_REUSEPORT), to use more than one core. They share the
    # work through PostgreSQL as replicas do, so more than one needs a PostgreSQL store.
    processes: int = Field(default=1, ge=1, le=64)
    # Read-only access to the web console under /ui (server.api_token is accepted there too).
    ui_token: SecretRef | None = None
    limits: IntakeLimits = IntakeLimits()
    # A new connection must send a complete request head within this; idle ones close after keepalive.
    header_timeout: Duration = Field(default=10.0, gt=0)
    keepalive_timeout: Duration = Field(default=15.0, gt=0)
    # Connections beyond this are closed as soon as they are accepted.
    max_connections: int = Field(default=4096, gt=0)
    # Bodies whose sender is only known from a signature over the body (PagerDuty, Grafana without a
    # token, Slack) are read at most this many at a time, each within unverified_read_timeout; more
    # get 503 at once (the senders retry).
    max_unverified_bodies: int = Field(default=4, gt=0)
    unverified_read_timeout: Duration = Field(default=5.0, gt=0)
    # ... and at most this large (PagerDuty events are a few kB; a Grafana group of 300 alerts fits).
    max_unverified_body_bytes: int = Field(default=512 * 1024, gt=0)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    @model_validator(mode="after")
    def _listen_has_port(self) -> ServerConfig:
        _host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen must be HOST:PORT, got {self.listen!r}")
        return self


class StoreConfig(Strict):
    url: str = "sqlite:///responder.db"
    # full: every acknowledged alert survives power loss; normal: survives a crash of the process only.
    sqlite_synchronous: Literal["full", "normal"] = "full"
    pool_size: int = Field(default=10, ge=1)
    # Seconds before a claimed job whose worker vanished is handed to another worker.
    lease_seconds: Duration = 120.0
    poll_interval: Duration = 0.5
    connect_timeout: Duration = 5.0

    @model_validator(mode="after")
    def _known_scheme(self) -> StoreConfig:
        if not self.url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("url must start with sqlite:// or postgresql://")
        return self


class PipelineConfig(Strict):
    workers: int = Field(default=4, ge=1, le=256)
    # While webhooks wait for their commit, the pipeline waits up to this long before claiming more
    # incidents, so a burst is acknowledged first (the jobs are durable and only start later); 0: never wait.
    intake_first_max_wait: Duration = 0.1
    job_timeout: Duration = 120.0
    max_attempts: int = Field(default=5, ge=1)
    retry_initial: Duration = 1.0
    retry_max: Duration = 60.0
    collector_timeout: Duration = 10.0
    collectors_total_timeout: Duration = 30.0
    # Evidence longer than this is cut (with a marker) where it is shown; the full text is stored up
    # to `evidence_store_bytes`.
    evidence_display_bytes: int = 3000
    evidence_store_bytes: int = 1024 * 1024


class SupervisorConfig(Strict):
    # A long-lived task (queue worker, heartbeat, gauge) that fails is restarted after a jittered
    # backoff growing from restart_initial to restart_max ...
    restart_initial: Duration = 0.5
    restart_max: Duration = 30.0
    # ... and when one fails more than max_restarts times within restart_window, the process exits
    # non-zero so that its own supervisor (Kubernetes, systemd) restarts it.
    max_restarts: int = Field(default=5, ge=0)
    restart_window: Duration = 60.0


class SecretsConfig(Strict):
    # `{file: ...}` secrets are read at load, then again this often (Kubernetes rotates mounted secrets
    # in place) and on SIGHUP; 0 turns the interval off.
    reload_interval: Duration = 60.0


class RulesConfig(Strict):
    dirs: list[Path] = Field(default_factory=lambda: [Path("rules")])
    # Rule used for alerts that no rule matches; None records them as unmatched.
    default_rule: str | None = None


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


# Who may press which button in Slack. Slack user ids look like U0123ABCD (W... on Enterprise Grid),
# user group ids like S0123ABCD.
SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")
SLACK_GROUP = re.compile(r"^S[A-Z0-9]{2,}$")
ACTION_KINDS = ("approve", "silence", "acknowledge", "rerun")


def _slack_principal(value: str) -> str:
    if not (SLACK_USER.match(value) or SLACK_GROUP.match(value)):
        raise ValueError(f"{value!r} is neither a Slack user id (U0123ABCD, W0123ABCD)"
                         " nor a user group id (S0123ABCD)")
    return value


SlackPrincipal = Annotated[str, AfterValidator(_slack_principal)]


class SlackPermissions(Strict):
    """Per action kind, the users and user groups allowed; None lets everyone in the channel click, except
    for approve, where None means nobody (a production change needs a list written down)."""

    approve: list[SlackPrincipal] | None = None
    silence: list[SlackPrincipal] | None = None
    acknowledge: list[SlackPrincipal] | None = None
    rerun: list[SlackPrincipal] | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_kinds(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(k) for k in data if k not in ACTION_KINDS]
            if unknown:
                raise ValueError(f"unknown action kind(s) {', '.join(map(repr, unknown))}"
                                 f" (known: {', '.join(ACTION_KINDS)})")
        return data

    def allowed(self, kind: str) -> list[str] | None:
        """The principals allowed for an action kind; None: everyone."""
        listed: list[str] | None = getattr(self, kind)
        if listed is None and kind == "approve":
            return []
        return listed


class ConsoleSinkConfig(Strict):
    enabled: bool = True


class SlackSinkConfig(Strict):
    # The bot token (xoxb-...); the Slack sink runs only when it resolves.
    token: SecretRef | None = None
    api_url: str = "https://slack.com/api/"
    # Where incidents go when their rule names no channel (`slack.channel` in the rule). IDs (C0123...) are
    # best; names work too (resolving them for crash recovery needs the channels:read scope).
    default_channel: str = "#incidents"
    # Severity label value -> Slack user group id (S0123...) mentioned in the incident's first message.
    mentions: dict[str, str] = Field(default_factory=dict)
    # Slack allows about one message per second per channel; bursts above this wait their turn.
    rate_per_channel: float = Field(default=1.0, gt=0)
    # Edits of parent messages (chat.update) per second for the whole workspace: Slack's own limit for the
    # method (about 50 a minute), apart from the channel's messages.
    update_rate: float = Field(default=0.8, gt=0)
    # Every Slack call gives up after this long (and is retried).
    timeout: Duration = 10.0
    # A message that cannot be delivered yet (outage, rate limit) is retried this many times, with
    # backoff up to pipeline.retry_max between attempts: an outage delays messages, it does not drop them.
    max_attempts: int = Field(default=10000, ge=1)
    # A re-fire of the same alert within this time of the thread's last activity goes to that thread.
    refire_window: Duration = 86400.0
    # Storm members are listed compactly in the parent message, up to this many lines.
    storm_list_lines: int = Field(default=20, ge=1, le=40)
    # A thread's parent message is edited at most once per this interval (pending edits are coalesced:
    # only the newest state is sent, and an edit that would change nothing is not sent).
    min_update_interval: Duration = 20.0
    # Alerts joining or resolving are told in one reply ("+37 alerts, 2 resolved") at most this often.
    summary_interval: Duration = 60.0
    # While a channel has a backlog of messages (a storm), its threads' parent edits and member summaries
    # wait for it to drain, so each shows the final state once; at most this long.
    backlog_max_wait: Duration = 300.0
    # Who may approve, silence, acknowledge and re-run diagnostics from the thread (docs/slack.md).
    permissions: SlackPermissions = SlackPermissions()
    # User group memberships (usergroups.users.list) are asked again after this long.
    membership_cache: Duration = 300.0
    # "Re-run diagnostics" runs an incident's collectors at most once per this interval.
    rerun_min_interval: Duration = 300.0
    # https://<workspace>.slack.com: lets the web console link straight to an incident's thread (without
    # it, the console links to the thread's channel).
    workspace_url: str | None = Field(default=None, pattern=r"^https://[A-Za-z0-9.-]+/?$")

    @property
    def token_value(self) -> str | None:
        secret = self.token.resolve() if self.token is not None else None
        return secret.reveal() if secret is not None else None


class SinksConfig(Strict):
    console: ConsoleSinkConfig = ConsoleSinkConfig()
    slack: SlackSinkConfig = SlackSinkConfig()


class CommandsConfig(Strict):
    # Executables `command.run` may start, by absolute path or bare name (looked up on PATH at
    # load time); anything else is refused. Empty: no commands at all.
    allow: list[str] = Field(default_factory=list)
    timeout: Duration = 10.0
    # Output beyond this many bytes (stdout and stderr each) is cut off while reading.
    output_bytes: int = Field(default=64 * 1024, gt=0)
    # Environment variables passed through to commands (besides a fixed PATH and LANG); nothing else leaks.
    pass_env: list[str] = Field(default_factory=list)


class NetworkConfig(Strict):
    """Where collectors that take a host from the alert (tls.certificate) may connect. Named targets
    (targets.http, ...) are configured here by the operator and need no entry."""

    # Shell patterns of host names or addresses, optionally with :PORT (`*.example.com`, `api.internal:8443`);
    # empty: no host from an alert is contacted.
    allow_hosts: list[str] = Field(default_factory=list)
    # Loopback, link-local (the cloud metadata address), private and other non-public addresses are
    # refused even for an allowed name, unless they fall in one of these networks (`10.20.0.0/16`).
    allow_private: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _networks_parse(self) -> NetworkConfig:
        for network in self.allow_private:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"allow_private: {exc}") from None
        return self


class CollectorsConfig(Strict):
    commands: CommandsConfig = CommandsConfig()
    network: NetworkConfig = NetworkConfig()
    # Identical collector calls (type, target, parameters) within this time share one execution and its
    # result across incidents, so a storm asks the systems under stress once; 0 turns sharing off.
    cache_ttl: Duration = 30.0


class KubernetesTarget(Strict):
    in_cluster: bool = False
    kubeconfig: Path | None = None
    context: str | None = None
    # For API servers reached without a kubeconfig (tests, proxies): URL plus bearer token.
    url: str | None = None
    token: SecretRef | None = None
    verify_tls: bool = True


class PostgresTarget(Strict):
    dsn: PlainUrlOrSecret
    statement_timeout: Duration = 5.0


class RedisTarget(Strict):
    url: PlainUrlOrSecret


class PrometheusTarget(Strict):
    url: str
    bearer_token: SecretRef | None = None


class HttpTarget(Strict):
    url: str
    headers: dict[str, SecretRef] = Field(default_factory=dict)
    verify_tls: bool = True


class AlertmanagerAuth(Strict):
    bearer_token: SecretRef | None = None
    basic: BasicAuthConfig | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> AlertmanagerAuth:
        if (self.bearer_token is None) == (self.basic is None):
            raise ValueError("give exactly one of 'bearer_token' or 'basic'")
        return self


class AlertmanagerTarget(Strict):
    # Where the daemon reaches Alertmanager's API v2.
    url: str
    # The externalURL Alertmanager puts in its webhooks, when it is not `url` (behind an ingress, a proxy).
    external_url: str | None = None
    auth: AlertmanagerAuth | None = None
    timeout: Duration = 5.0
    verify_tls: bool = True


class TargetsConfig(Strict):
    kubernetes: dict[str, KubernetesTarget] = Field(default_factory=dict)
    postgres: dict[str, PostgresTarget] = Field(default_factory=dict)
    redis: dict[str, RedisTarget] = Field(default_factory=dict)
    prometheus: dict[str, PrometheusTarget] = Field(default_factory=dict)
    http: dict[str, HttpTarget] = Field(default_factory=dict)
    alertmanager: dict[str, AlertmanagerTarget] = Field(default_factory=dict)


class LockRedisConfig(Strict):
    """Where target locks live when several replicas share the work: a Redis URL or a Redis target."""

    url: PlainUrlOrSecret | None = None
    target: str | None = None
    key_prefix: str = "responder:"
    timeout: Duration = 2.0

    @model_validator(mode="after")
    def _one_source(self) -> LockRedisConfig:
        if (self.url is None) == (self.target is None):
            raise ValueError("give exactly one of 'url' or 'target'")
        return self


class ApprovalsConfig(Strict):
    # A pending approval nobody answers within this time expires and nothing runs.
    timeout: Duration = 900.0
    # Slack's signing secret, to verify POST /slack/interactions; without it every interaction is refused.
    slack_signing_secret: SecretRef | None = None
    # Requests signed longer ago than this (or in the future by as much) are refused as replays.
    max_clock_skew: Duration = 300.0
    # Slack's interaction payloads are small; larger bodies are refused before they are read.
    max_body_bytes: int = Field(default=128 * 1024, gt=0)


class MitigationsConfig(Strict):
    mode: Literal["dry-run", "enforce"] = "dry-run"
    # One switch that stops every action at once; RESPONDER_KILL_SWITCH=1 or POST /api/kill-switch do the same.
    kill_switch: bool = False
    # Defaults for every action on one target; a rule step may set stricter (or looser) values.
    cooldown: Duration = 1800.0
    max_per_day: int = Field(default=3, ge=0)
    # Across all actions and targets, per rolling hour.
    max_per_hour: int = Field(default=20, ge=0)
    # Shell-style patterns of target keys (kubernetes/prod/deployment/api) and namespaces allowed to be
    # changed; empty allows all.
    allow_targets: list[str] = Field(default_factory=list)
    allow_namespaces: list[str] = Field(default_factory=list)
    # An alert that started longer ago than this is not acted on (a backlog replayed after an outage).
    max_alert_age: Duration = 3600.0
    # How long one action may run before it counts as failed.
    action_timeout: Duration = 30.0
    # Per-target locks shared by all replicas; without it locks are in-process (one daemon only).
    redis: LockRedisConfig | None = None
    # A lock outlives a crashed holder by at most this long.
    lock_ttl: Duration = 300.0
    approvals: ApprovalsConfig = ApprovalsConfig()


class Config(Strict):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    pipeline: PipelineConfig = PipelineConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    secrets: SecretsConfig = SecretsConfig()
    rules: RulesConfig = RulesConfig()
    intakes: dict[str, IntakeConfig] = Field(
        default_factory=lambda: {"alertmanager": IntakeConfig(auth=IntakeAuthConfig(unauthenticated="loopback"))}
    )
    targets: TargetsConfig = TargetsConfig()
    sinks: SinksConfig = SinksConfig()
    mitigations: MitigationsConfig = MitigationsConfig()
    collectors: CollectorsConfig = CollectorsConfig()
    logging: LoggingConfig = LoggingConfig()
    # Extra redaction patterns (regular expressions) applied to all evidence.
    redact: list[str] = Field(default_factory=list)
    # Extra modules to import for their plugins (your own collectors, actions, intakes or sinks).
    plugins: list[str] = Field(default_factory=list)

    # Where the file was read from; relative paths in it are relative to its folder.
    source: Path | None = Field(default=None, exclude=True)
    # The parsed file, so problems found later (by `check`) can name the line of a key.
    _document: YamlDocument | None = PrivateAttr(default=None)

    def line(self, key: str) -> int | None:
        """The line of a dotted key in the config file (None: not written there)."""
        return self._document.line(key.split(".")) if self._document is not None else None

    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def rule_dirs(self) -> list[Path]:
        return [d if d.is_absolute() else self.base_dir() / d for d in self.rules.dirs]

    def store_url(self) -> str:
        """The store URL with a relative SQLite path anchored at the config file's folder."""
        url = self.store.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            path = Path(url.removeprefix("sqlite:///"))
            if not path.is_absolute():
                return f"sqlite:///{(self.base_dir() / path).resolve()}"
        return url


def format_validation_error(origin: str, exc: ValidationError, model: type[BaseModel],
                            document: YamlDocument | None = None, prefix: tuple[Any, ...] = ()) -> list[Problem]:
    """One problem per pydantic error: file, line (when the YAML says), dotted key, message."""
    return [Problem(origin, None, ".".join(str(p) for p in loc) or "(top level)", message,
                    document.line((*prefix, *loc)) if document else None)
            for loc, message in validation_messages(exc, model)]


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read, merge command-line overrides into, and validate a config file (None: all defaults)."""
    raw: dict[str, Any] = {}
    origin = str(path) if path else "(defaults)"
    document: YamlDocument | None = None
    if path is not None:
        try:
            document = parse_yaml(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([Problem(origin, None, "", f"cannot read: {exc.strerror}")]) from exc
        except YamlError as exc:
            raise ConfigError([Problem(origin, None, "", f"not valid YAML: {exc.message}", exc.line)]) from exc
        loaded = document.data if document.data is not None else {}
        if not isinstance(loaded, dict):
            raise ConfigError([Problem(origin, None, "", "the top level must be a mapping", 1)])
        raw = loaded
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        partial, broken = _partial_config(raw, path, document)
        raise ConfigError(format_validation_error(origin, exc, Config, document), partial, broken) from exc
    config = config.model_copy(update={"source": path.resolve() if path else None})
    config._document = document
    problems = [Problem(origin, None, key, msg, config.line(key)) for key, msg in _unreadable_secrets(config)]
    lock_redis = config.mitigations.redis
    if lock_redis is not None and lock_redis.target is not None and lock_redis.target not in config.targets.redis:
        problems.append(Problem(origin, None, "mitigations.redis.target",
                                f"no redis target named {lock_redis.target!r}",
                                config.line("mitigations.redis.target")))
    for name, intake in config.intakes.items():
        if intake.alertmanager is not None and intake.alertmanager not in config.targets.alertmanager:
            key = f"intakes.{name}.alertmanager"
            problems.append(Problem(origin, None, key, f"no alertmanager target named {intake.alertmanager!r}",
                                    config.line(key)))
    problems += [Problem(origin, None, "server.processes", p, config.line("server.processes"))
                 for p in _processes_problems(config)]
    if problems:
        raise ConfigError(problems, config)
    return config


def _partial_config(raw: dict[str, Any], path: Path | None,
                    document: YamlDocument | None) -> tuple[Config, frozenset[str]]:
    """The sections that are valid on their own (defaults for the others), and the names of the others."""
    good: dict[str, Any] = {}
    broken = []
    for name in raw:
        if name not in Config.model_fields:
            continue
        try:
            Config.model_validate({name: raw[name]})
        except ValidationError:
            broken.append(name)
        else:
            good[name] = raw[name]
    config = Config.model_validate(good).model_copy(update={"source": path.resolve() if path else None})
    config._document = document
    return config, frozenset(broken)


def _processes_problems(config: Config) -> list[str]:
    """Several processes are replicas on one host: they need what replicas need."""
    if config.server.processes == 1:
        return []
    problems = []
    if not config.store.url.startswith(("postgresql://", "postgres://")):
        problems.append("more than one process needs a PostgreSQL store (SQLite serves one process)")
    if config.mitigations.mode == "enforce" and config.mitigations.redis is None:
        problems.append("more than one process in enforce mode needs mitigations.redis, so that target locks"
                        " are shared between the processes")
    return problems


def iter_secret_refs(node: Any, key: str = "") -> list[tuple[str, SecretRef]]:
    """Every SecretRef in a config tree, with its dotted key."""
    found: list[tuple[str, SecretRef]] = []
    if isinstance(node, SecretRef):
        found.append((key, node))
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            found += iter_secret_refs(getattr(node, name), f"{key}.{name}" if key else name)
    elif isinstance(node, dict):
        for k, v in node.items():
            found += iter_secret_refs(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += iter_secret_refs(v, f"{key}.{i}")
    return found


def _unreadable_secrets(config: Config) -> list[tuple[str, str]]:
    problems = []
    for key, ref in iter_secret_refs(config):
        try:
            ref.resolve()
        except ValueError as exc:
            problems.append((key, str(exc)))
    return problems


def secret_values(config: Config) -> list[str]:
    """Every resolved secret value, so redaction can remove them from evidence."""
    values = []
    for _, ref in iter_secret_refs(config):
        secret = None if ref.is_plain else ref.resolve()  # a plain URL is no secret, and evidence may name it
        if secret is not None and len(secret.reveal()) >= MIN_REDACTED:
            values.append(secret.reveal())
    return values


# Shorter values would mask ordinary words in evidence.
MIN_REDACTED = 4
