# Stand-in for rayproject/ray:2.60.0-py311 (CPU), the training image's release base, built
# here from Debian packages (no registry is reachable), plus the trainjob's whole dependency
# set as one layer (hack/images/trainjob-cpu.lock, installed offline from a wheelhouse that
# hack/images/build.sh mounts at /wheelhouse). What it keeps of Ray's image, because the
# RayJob pods rely on it:
#   - user "ray", uid 1000, group users (100), HOME /home/ray owned by it: the pods run as
#     uid 1000 and Ray's dashboard writes under HOME (PermissionError on /root otherwise);
#   - the Python environment owned by that user and first on PATH, also for login shells:
#     KubeRay starts Ray with `bash -lc`, and Debian's /etc/profile resets PATH;
#   - a real wget (KubeRay's readiness/liveness probes call it; busybox's segfaults here);
#   - g++ and the Python headers: DeepSpeed JIT-builds its CPU shared-memory op at start.
# The dependency layer also holds that op, built where docker/trainjob.Dockerfile builds it
# (TORCH_EXTENSIONS_DIR): the trainjob build then finds it up to date instead of compiling
# it again on every source change.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++ python3-dev \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray \
 && printf '%s\n' '# KubeRay runs `bash -lc`: keep the image environment first on PATH.' \
      'export PATH="/home/ray/venv/bin:$PATH"' >/etc/profile.d/ray-venv.sh
USER 1000:100
WORKDIR /home/ray
ENV HOME=/home/ray \
    VIRTUAL_ENV=/home/ray/venv \
    PATH=/home/ray/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
RUN python3 -m venv /home/ray/venv \
 && pip install --no-cache-dir --no-index --find-links=/wheelhouse --no-deps \
      --requirement /wheelhouse/requirements.lock \
 && python -c "import torch, deepspeed, ray, peft, transformers" \
 && ray --version && wget --version >/dev/null \
 && TORCH_EXTENSIONS_DIR=/home/ray/.cache/torch_extensions DS_ACCELERATOR=cpu \
    python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
CMD ["bash"]
