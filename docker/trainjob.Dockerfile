# syntax=docker/dockerfile:1
# The training image of the RayJobs: Ray (the base), torch, DeepSpeed, PEFT, transformers
# (the `anytasktune-trainjob` and `anytasktune-contract` distributions: nothing of the
# operator) and the trainjob entrypoint `python -m anytasktune_trainjob`. Build from the
# repository root:
#   docker build -f docker/trainjob.Dockerfile -t ghcr.io/anytasktune/trainjob:0.1.0 .
# CPU-only pools: --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311
# The Ray version must match ray[train] in pyproject.toml and spec.cluster.rayVersion.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}
# Ray's images run as user "ray", uid 1000 (group users, 100), owner of the Python
# environment; the operator renders pods with runAsUser 1000 (render.RAY_UID).
USER 1000:100
WORKDIR /home/ray
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --chown=1000:100 contract /tmp/anytasktune/contract
COPY --chown=1000:100 trainjob /tmp/anytasktune/trainjob
RUN pip install --no-cache-dir /tmp/anytasktune/contract /tmp/anytasktune/trainjob \
 && rm -rf /tmp/anytasktune \
 && python -c "import anytasktune_trainjob.__main__"
