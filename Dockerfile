# One image for both roles: `docker run IMAGE server -c /etc/runewarp/server.toml`
# or `... client -c /etc/runewarp/client.toml`.  Runs as the non-root UID 10001.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY runewarp ./runewarp
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="runewarp" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Self-hosted SNI ingress tunnel: the public edge never sees plaintext" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 runewarp \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/runewarp --create-home runewarp
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV XDG_CONFIG_HOME=/etc \
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
