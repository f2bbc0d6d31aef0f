# syntax=docker/dockerfile:1
#
# aegis-online feedback worker: a Kafka consumer-group member that applies feedback to the Redis learner store.
# Slim: the redis and kafka clients and prometheus-client (its /metrics), no torch, no Ray.
#
#   docker build -f deploy/docker/worker.Dockerfile -t aegis-online-worker:0.1.0 .
#   docker run --rm -e AEGIS_EXPERTS=profanity-check,minilm-embedding -e AEGIS_REDIS_URL=redis://redis:6379/0 \
#       -e AEGIS_KAFKA_BOOTSTRAP=kafka:9092 aegis-online-worker:0.1.0
#
# Arguments after the image name are the command's options (aegis-online feedback-worker --help). No secrets are
# baked in: a Redis URL with a password or Kafka credentials come from Secrets through the environment.

# The package as a wheel, built from the sources only.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aegis_online ./aegis_online
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# A virtual environment with the package and its worker extras; the final stage copies it without pip's leftovers.
FROM python:3.11-slim AS venv
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    wheel="$(find /tmp/wheels -name 'aegis_online-*.whl')" \
    && pip install --no-cache-dir "aegis-online[redis,kafka,metrics] @ file://${wheel}"

FROM python:3.11-slim
ARG AEGIS_VERSION=0.1.0

LABEL org.opencontainers.image.title="aegis-online-worker" \
      org.opencontainers.image.description="aegis-online Kafka feedback worker (Redis learner store)" \
      org.opencontainers.image.version="${AEGIS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11-slim"

RUN groupadd --system --gid 10001 aegis \
    && useradd --system --uid 10001 --gid aegis --create-home --home-dir /home/aegis --shell /usr/sbin/nologin aegis

COPY --from=venv /opt/venv /opt/venv
# The expert catalog (experts/*.yaml), which the service configuration resolves expert names against. Owned by
# root, read-only to the worker.
COPY experts /opt/aegis/experts
ENV PATH=/opt/venv/bin:$PATH \
    AEGIS_EXPERTS_DIR=/opt/aegis/experts \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Fail the build, not the deployment: the command loads, and neither torch nor Ray came in through a dependency.
RUN aegis-online feedback-worker --help > /dev/null \
    && python -c "import importlib.util as u, sys; \
        heavy = [m for m in ('torch', 'ray', 'vllm', 'transformers') if u.find_spec(m)]; \
        sys.exit(f'heavy modules installed: {heavy}' if heavy else 0)"

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /home/aegis
# The worker's health and /metrics port.
EXPOSE 8081
ENTRYPOINT ["aegis-online", "feedback-worker"]
