# syntax=docker/dockerfile:1
#
# aegis-online, CPU image: the KubeRay head and CPU worker pods, and a standalone `aegis-online serve`.
#
#   docker build -f deploy/docker/service.Dockerfile -t aegis-online:0.1.0 .
#   docker run --rm -p 8000:8000 --shm-size=2g -v "$PWD/my-config:/etc/aegis/config:ro" aegis-online:0.1.0
#
# Ray is the base image's, at the cluster's exact version: KubeRay requires the same Ray on every pod, so build with
# --build-arg RAY_VERSION=<the RayCluster's rayVersion> (the Helm chart's default must equal the default below).
# Torch is the CPU build from the PyTorch CPU index (the default PyPI wheel would pull gigabytes of CUDA libraries).
# KubeRay supplies the pods' command (ray start ...), so there is no ENTRYPOINT; the CMD is for standalone use and
# expects a service config at /etc/aegis/config/serve-config.yaml, mounted there as the Helm chart lays it out
# (standalone, it must bind 0.0.0.0 and so needs API keys: see docs/serving.md). No secrets are baked in: API keys
# and Redis/Kafka credentials come from mounted Secrets or AEGIS_SERVE_* environment variables at run time. Ray's
# object store lives in /dev/shm: give a standalone container a large one (--shm-size).

ARG RAY_VERSION=2.60.0

# The package as a wheel, built from the sources only.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aegis_online ./aegis_online
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM rayproject/ray:${RAY_VERSION}-py311-cpu
ARG RAY_VERSION
# The CPU build that the project is tested with (Makefile).
ARG TORCH_VERSION=2.13.0
ARG AEGIS_VERSION=0.1.0

LABEL org.opencontainers.image.title="aegis-online" \
      org.opencontainers.image.description="aegis-online moderation service on Ray Serve, CPU" \
      org.opencontainers.image.version="${AEGIS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="rayproject/ray:${RAY_VERSION}-py311-cpu"

# The base image's non-root user: ray (uid 1000, group users 100). Numeric, so that Kubernetes' runAsNonRoot can
# check it; it owns the image's Python, so the installs below run as ray too.
USER 1000:100
ENV PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# torch and ray are named again, pinned, so that the resolver keeps the CPU build and the base image's Ray (a
# dependency asking for another version fails the build instead of replacing them).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    wheel="$(find /tmp/wheels -name 'aegis_online-*.whl')" \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" "ray[serve]==${RAY_VERSION}" \
        "aegis-online[serve,experts,http,redis,kafka] @ file://${wheel}"

# The expert catalog (experts/*.yaml) is not part of the package: it is read from here at run time. Owned by root,
# read-only to the service.
COPY experts /opt/aegis/experts
ENV AEGIS_EXPERTS_DIR=/opt/aegis/experts

# Fail the build, not the cluster: Ray is still the base image's, torch is the CPU build, the catalog loads.
RUN python -c "import ray, torch; \
        assert ray.__version__ == '${RAY_VERSION}', ray.__version__; \
        assert torch.version.cuda is None, torch.version.cuda" \
    && aegis-online experts list > /dev/null

EXPOSE 8000
CMD ["aegis-online", "serve", "--config", "/etc/aegis/config/serve-config.yaml"]
