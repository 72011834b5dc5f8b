# syntax=docker/dockerfile:1
#
# One image for the application; the command picks the part:
#   python -m worker           the Temporal worker (default)
#   python -m callbacks_api    the callbacks API (aiohttp)
#   python -m simulator        the downstream simulator (command one over SQS, command two HTTP)
#   python -m simulator.inbox  the approvers' inbox (approval mails from SNS, on a page)
#   python -m common.aws_resources   one-shot: tables, topic and queue, idempotently
# Settings come from the environment only (see docs/settings.md and docs/deployment.md).
#
# Build: docker build -t approval-flow .

# Pinned to a patch release; bump it deliberately (or pin the digest, python@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: a virtual environment with the locked runtime dependencies and the project ------
FROM ${PYTHON_IMAGE} AS builder

# uv installs exactly what uv.lock names, into /opt/venv, with the Python of the base image.
# Bytecode is compiled here, once, so no container pays for it at start.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

WORKDIR /src

# uv itself, at the version the lock names, into the builder's own Python: it never reaches the
# final image.
COPY pyproject.toml uv.lock ./
RUN pip install "uv==$(python -c "import tomllib; print(next(p['version'] for p in \
        tomllib.load(open('uv.lock', 'rb'))['package'] if p['name'] == 'uv'))")"

# Dependencies first, in their own layer: rebuilt only when pyproject.toml or uv.lock change.
# Only [project].dependencies: the dev extra stays out of the image. --locked refuses a lock that
# is out of step with pyproject.toml (run `make lock`).
RUN uv sync --locked --no-install-project --no-editable

# Then the project itself (a regular, non-editable install into the venv's site-packages).
COPY README.md ./
COPY worker.py ./
COPY starter.py ./
COPY workflows ./workflows
COPY activities ./activities
COPY callbacks_api ./callbacks_api
COPY common ./common
COPY cli ./cli
COPY local_stack ./local_stack
COPY simulator ./simulator
# A venv made by uv holds no pip or setuptools: nothing can install packages at run time.
RUN uv sync --locked --no-editable

# --- final: the slim base, the venv and an unprivileged user; no compilers, no pip ------------
FROM ${PYTHON_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric uid/gid, so orchestrators can check runAsNonRoot and volumes can be chowned.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /app/data \
    && chown -R app:app /app

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Writable state (the simulator's executed keys, the inbox's messages) goes to /app/data, owned
# by the app user; docker-compose.yml mounts named volumes there to keep it across restarts.
USER 10001:10001

# Ports used by the commands above with the settings in docker-compose.yml (documentation only):
# 8080 callbacks API, 8082 downstream simulator, 8025 inbox, 9464 worker metrics.
EXPOSE 8080 8082 8025 9464

# No HEALTHCHECK here: what "healthy" means depends on the command, so each service in
# docker-compose.yml declares its own.
CMD ["python", "-m", "worker"]
