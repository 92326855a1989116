# One image for both roles, built by `make image` as runewarp/runewarp:<version> and :latest:
# `docker run runewarp/runewarp server -c /etc/runewarp/server.toml` or
# `... client -c /etc/runewarp/client.toml`.  Runs as the non-root UID 10001.
# BASE_IMAGE: any image with Python 3.11+ (with pip and venv) and useradd, e.g. a local
# Debian bookworm with python3-venv/python3-pip (tests/test_image.py builds with one).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY runewarp ./runewarp
RUN python3 -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="runewarp" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Self-hosted SNI ingress tunnel: the public edge never sees plaintext" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 runewarp \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/runewarp --create-home runewarp
COPY --from=build /wheels /wheels
# A venv: Debian's own python3 refuses system-wide pip installs (PEP 668).
RUN python3 -m venv /opt/runewarp \
 && /opt/runewarp/bin/pip install --no-cache-dir --disable-pip-version-check /wheels/*.whl \
 && rm -rf /wheels
# Configs name their folders under /var/lib/runewarp (examples/docker/*.toml, conf/*.toml);
# the XDG variables keep configs without folder keys on the same volume.
ENV PATH=/opt/runewarp/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XDG_CONFIG_HOME=/etc \
    XDG_DATA_HOME=/var/lib/runewarp \
    XDG_STATE_HOME=/var/lib/runewarp/state \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/runewarp
VOLUME ["/var/lib/runewarp"]
EXPOSE 443
# The Server answers TCP on its public port once ready; compose files add this as a healthcheck.
STOPSIGNAL SIGTERM
ENTRYPOINT ["runewarp"]
CMD ["--help"]
