# Stand-in for python:3.11-slim-bookworm, the operator image's release base, built here from
# Debian packages (no registry is reachable): the debootstrap base (hack/images/build.sh)
# plus a virtualenv first on PATH, so `python`, `pip` and installed console scripts behave
# as in the official image (pip installs system-wide for root, readable by every uid).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN python3 -m venv /opt/python
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
CMD ["python3"]
