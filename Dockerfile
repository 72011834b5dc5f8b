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

# --- builder: a virtual environment with the runtime dependencies and the project ------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
# Only [project].dependencies are installed; the dev extras stay out of the image.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt

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
RUN pip install --no-deps . \
    && python -m compileall -q /opt/venv/lib
# Nothing installs packages at run time: take the installers out of the venv.
RUN pip uninstall --yes pip setuptools

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
