# syntax=docker/dockerfile:1
# The operator image: the contract and `anytasktune[operator]` (kopf, the kubernetes
# client, prometheus-client); no trainjob, no torch, no ray. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/anytasktune/operator:0.1.0 .
# Pin the base by digest at release time: --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
# Without a registry (make images here): hack/images/build.sh builds it with buildah from a
# Debian base of its own and a local wheelhouse.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Empty by default (wheels from PyPI). Offline builds pass a local wheelhouse, e.g.
# --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse (hack/images/build.sh).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
WORKDIR /src
COPY contract ./contract
COPY operator ./operator
# Wheels of the two distributions and of their operator dependencies only.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./contract "./operator[operator]"

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "anytasktune[operator]" \
 && useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin anytasktune
# Non-root, numeric so that runAsNonRoot can verify it (the chart sets the same uid).
USER 65532:65532
# 8080 Prometheus metrics, 8081 kopf liveness endpoint.
EXPOSE 8080 8081
ENTRYPOINT ["anytasktune"]
CMD ["operator"]
