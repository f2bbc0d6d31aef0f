# syntax=docker/dockerfile:1
#
# aegis-online, GPU image: the KubeRay GPU worker group that hosts the guard models (transformers and vLLM backends).
#
#   docker build -f deploy/docker/gpu.Dockerfile -t aegis-online-gpu:0.1.0 .
#
# Ray is the base image's (CUDA variant), at the cluster's exact version: keep RAY_VERSION's default equal to
# service.Dockerfile's (tests/deploy checks it) and build with --build-arg RAY_VERSION=<the RayCluster's rayVersion>.
# vLLM pins its own CUDA build of torch, so torch is not installed separately here. vLLM is pinned as well: left
# free, pip's resolver backtracks to an old vLLM rather than to an older torch. The torch it brings bundles its CUDA
# runtime; the nodes need an NVIDIA driver recent enough for that CUDA. KubeRay supplies the pods' command; no
# ENTRYPOINT. No secrets are baked in: Hugging Face tokens, API keys and credentials come from Secrets at run time.

ARG RAY_VERSION=2.60.0

# The package as a wheel, built from the sources only.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aegis_online ./aegis_online
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM rayproject/ray:${RAY_VERSION}-py311-gpu
ARG RAY_VERSION
ARG VLLM_VERSION=0.33.0
ARG AEGIS_VERSION=0.1.0

LABEL org.opencontainers.image.title="aegis-online-gpu" \
      org.opencontainers.image.description="aegis-online guard-model workers (transformers, vLLM) on Ray Serve, CUDA" \
      org.opencontainers.image.version="${AEGIS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="rayproject/ray:${RAY_VERSION}-py311-gpu"

# The base image's non-root user: ray (uid 1000, group users 100). Numeric, so that Kubernetes' runAsNonRoot can
# check it; it owns the image's Python, so the installs below run as ray too.
USER 1000:100
ENV PYTHONUNBUFFERED=1

# ray is named again, pinned, so that no dependency can replace the base image's Ray (the build fails instead).
# The CPU experts too: Ray may place a CPU expert replica on a GPU pod, which must be able to run it.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    wheel="$(find /tmp/wheels -name 'aegis_online-*.whl')" \
    && pip install --no-cache-dir "vllm==${VLLM_VERSION}" "ray[serve]==${RAY_VERSION}" \
        "aegis-online[serve,llm,vllm,experts,http,redis,kafka] @ file://${wheel}"

# The expert catalog (experts/*.yaml) is not part of the package: it is read from here at run time. Owned by root,
# read-only to the service.
COPY experts /opt/aegis/experts
ENV AEGIS_EXPERTS_DIR=/opt/aegis/experts

# Fail the build, not the cluster: Ray is still the base image's, torch is a CUDA build, the catalog loads. (Metadata
# only: importing vLLM or CUDA torch needs no GPU, but takes long.)
RUN python -c "from importlib.metadata import version as v; \
        assert v('ray') == '${RAY_VERSION}', v('ray'); \
        assert '+cpu' not in v('torch'), v('torch'); \
        assert v('vllm') == '${VLLM_VERSION}', v('vllm')" \
    && aegis-online experts list > /dev/null

EXPOSE 8000
CMD ["aegis-online", "serve", "--config", "/etc/aegis/config/serve-config.yaml"]
