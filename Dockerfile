# syntax=docker/dockerfile:1
# alert-responder image: wheels are built in a throw-away stage with a compiler, the final stage only
# installs them, so no build tools ship. Runs as an unprivileged numeric user (Kubernetes can verify
# runAsNonRoot only against a numeric UID).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler for dependencies that publish no wheel for the build platform (e.g. some arm64 builds).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY responder ./responder
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels alert-responder \
 && groupadd --system --gid 10001 responder \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin responder \
 && mkdir -p /var/lib/responder \
 && chown 10001:10001 /var/lib/responder
# Rules are baked in; mount a volume (or ConfigMap) over /app/rules to replace them.
COPY rules /app/rules
# The default config; mount your own file over it (the Helm chart mounts a ConfigMap at /etc/responder).
COPY deploy/container-config.yaml /etc/responder/config.yaml
WORKDIR /var/lib/responder
USER 10001:10001
# The embedded SQLite store lives here; give it a persistent volume or use PostgreSQL.
VOLUME ["/var/lib/responder"]
EXPOSE 8080
# No curl in the image: the interpreter that runs the daemon asks /healthz (non-2xx or no answer: exit 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["responder", "serve"]
CMD ["--config", "/etc/responder/config.yaml"]
