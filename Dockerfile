# vmm-cert-exporter: the exporter (and, with other commands, the receiver). The default target
# is the product alone; the `lab` target adds the simulated lab for deploy/docker-compose.yml.
ARG BASE=python:3.12-slim
FROM ${BASE} AS exporter

LABEL org.opencontainers.image.title="vmm-cert-exporter" \
      org.opencontainers.image.description="Prometheus exporter for SCVMM self-signed certificates"

WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY exporter/vmm_cert_exporter ./exporter/vmm_cert_exporter
# one layer: install with the exact versions make test ran with (constraints.txt), then drop
# the sources and pip's cache; the receiver's journal directory (receiver.journal's
# default), owned by the user, so a volume mounted there is writable; the configuration's
# directory, where a read-only root still lets a volume be mounted
RUN pip install --no-cache-dir --constraint constraints.txt . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin vmmcert \
    && install -d -o vmmcert -m 0700 /var/lib/vmm-cert-exporter \
    && install -d -m 0755 /etc/vmm-cert-exporter

WORKDIR /
USER 10001
EXPOSE 9868
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9868/-/healthy', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["vmm-cert-exporter"]
CMD ["serve", "--config", "/etc/vmm-cert-exporter/config.yml"]

# The simulated lab on top of the product, for deploy/docker-compose.yml's lab service only
# (`docker build --target lab`): it accepts a published password, never deploy it.
FROM exporter AS lab
USER 0
COPY exporter/lab /src/lab
RUN pip install --no-cache-dir /src/lab && rm -rf /src
USER 10001

# The default target: the product alone.
FROM exporter
