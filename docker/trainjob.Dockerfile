# syntax=docker/dockerfile:1
# The training image of the RayJobs: Ray (the base), torch, DeepSpeed, PEFT, transformers
# (the `anytasktune-trainjob` and `anytasktune-contract` distributions: nothing of the
# operator) and the trainjob entrypoint `python -m anytasktune_trainjob`. Build from the
# repository root:
#   docker build -f docker/trainjob.Dockerfile -t ghcr.io/anytasktune/trainjob:0.1.0 .
# CPU-only pools: --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311 --build-arg TRAINJOB_EXTRAS=
# (TRAINJOB_EXTRAS=fused, the default, adds liger-kernel for training.fusedKernels: GPUs only).
# The Ray version must match ray[train] in trainjob/pyproject.toml and spec.cluster.rayVersion.
# Without a registry (make images here): hack/images/build.sh builds it with buildah on a
# Debian stand-in for Ray's CPU image that already holds the dependencies, offline.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}
# Empty by default (dependencies from PyPI). Offline builds pass a local wheelhouse, e.g.
# PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse, and PIP_NO_DEPS=1 on a base with the
# dependencies installed (hack/images/build.sh).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG PIP_NO_DEPS
ARG TRAINJOB_EXTRAS=fused
# The operator renders pods with runAsUser 1000 (render.RAY_UID), as Ray's images run
# (user "ray", uid 1000, group users 100, owner of the Python environment). HOME and the
# working directory must be writable by that uid: Ray's dashboard writes there and dies
# with PermissionError otherwise.
USER root
RUN install -d -o 1000 -g 100 /home/ray
USER 1000:100
WORKDIR /home/ray
ENV HOME=/home/ray \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --chown=1000:100 contract /tmp/anytasktune/contract
COPY --chown=1000:100 trainjob /tmp/anytasktune/trainjob
RUN pip install --no-cache-dir /tmp/anytasktune/contract "/tmp/anytasktune/trainjob${TRAINJOB_EXTRAS:+[$TRAINJOB_EXTRAS]}" \
 && rm -rf /tmp/anytasktune \
 && python -c "import anytasktune_trainjob.__main__" \
 && wget --version >/dev/null  # KubeRay's head and worker probes run wget
# Where DeepSpeed keeps the ops it compiles at run time (GPU ops such as fused Adam). Its CPU
# shared-memory op is not built: the trainjob tells DeepSpeed to skip it
# (training.skip_unused_cpu_comm_op), as training never uses it.
ENV TORCH_EXTENSIONS_DIR=/home/ray/.cache/torch_extensions
