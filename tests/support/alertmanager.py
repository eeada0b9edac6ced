"""A real Alertmanager (Debian's `prometheus-alertmanager`) on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import ManagedProcess, wait_http
from tests.support.services import free_port, require

BINARY = "prometheus-alertmanager"


def find_binaries() -> tuple[str, str]:
    am, amtool = shutil.which(BINARY) or shutil.which("alertmanager"), shutil.which("amtool")
    if not am or not amtool:
        require("Alertmanager", "install the Debian packages prometheus-alertmanager (binaries alertmanager, amtool)")
    assert am and amtool
    return am, amtool


class Alertmanager:
    """Started with one webhook receiver; group timings short so tests see notifications in seconds."""

    def __init__(self, workdir: Path, webhook_url: str, *, bearer_token: str | None = None,
                 group_wait: str = "1s", group_interval: str = "2s", repeat_interval: str = "1h",
                 port: int | None = None) -> None:
        self.binary, self.amtool = find_binaries()
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True, "max_alerts": 0}
        if bearer_token:
            webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": bearer_token}}
        self.config = {
            "route": {"receiver": "responder", "group_by": ["alertname"], "group_wait": group_wait,
                      "group_interval": group_interval, "repeat_interval": repeat_interval},
            "receivers": [{"name": "responder", "webhook_configs": [webhook]}],
        }
        self.process: ManagedProcess | None = None

    async def __aenter__(self) -> Alertmanager:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(self.config))
        self.process = ManagedProcess(
            [self.binary, f"--config.file={config_path}", f"--storage.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", f"--web.external-url={self.url}",
             "--cluster.listen-address=", "--log.level=warn"],
            self.workdir / "alertmanager.log",
        ).start()
        await wait_http(f"{self.url}/-/ready", timeout=30, proc=self.process)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.stop()

    def amtool_alert(self, labels: dict[str, str], *, annotations: dict[str, str] | None = None,
                     start: str | None = None, end: str | None = None) -> None:
        """`amtool alert add` as an operator would type it."""
        argv = [self.amtool, "alert", "add", f"--alertmanager.url={self.url}"]
        argv += [f"{k}={v}" for k, v in labels.items()]
        argv += [f"--annotation={k}={v}" for k, v in (annotations or {}).items()]
        if start:
            argv.append(f"--start={start}")
        if end:
            argv.append(f"--end={end}")
        subprocess.run(argv, check=True, capture_output=True, timeout=20)

    def amtool_json(self, *args: str) -> Any:
        """An amtool query as an operator would type it, its JSON output parsed."""
        argv = [self.amtool, *args, "-o", "json", f"--alertmanager.url={self.url}"]
        return json.loads(subprocess.run(argv, check=True, capture_output=True, timeout=20, text=True).stdout)
