"""A real Prometheus (Debian's `prometheus`) on a free loopback port, scraping nothing: tests ask it
constant expressions such as `vector(0.01)`, which it evaluates like any query."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Self

import yaml

from tests.support.processes import ManagedProcess, wait_http
from tests.support.services import free_port, require


class Prometheus:
    def __init__(self, workdir: Path, scrape: list[str] | None = None) -> None:
        binary = shutil.which("prometheus")
        if not binary:
            require("Prometheus", "install the Debian package prometheus")
        assert binary
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: ManagedProcess | None = None
        # host:port targets scraped every second (job "test"), for tests that query real series.
        self.scrape = scrape or []

    def configuration(self) -> dict[str, Any]:
        """prometheus.yml; subclasses that scrape or alert differently return their own."""
        jobs = [{"job_name": "test", "scrape_interval": "1s", "static_configs": [{"targets": self.scrape}]}]
        return {"global": {"scrape_interval": "1m"}, "scrape_configs": jobs if self.scrape else []}

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.configuration()))
        self.process = ManagedProcess(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            self.workdir / "prometheus.log",
        ).start()
        await wait_http(f"{self.url}/-/ready", timeout=30, proc=self.process)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.stop()
