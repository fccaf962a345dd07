# vmm-cert-exporter: the exporter (and, with other commands, the receiver). The default target
# is the product alone; the `lab` target adds the simulated lab for deploy/docker-compose.yml.
ARG BASE=python:3.12-slim

# pywinrm's Kerberos (the kerberos extra) needs pykerberos and gssapi, which PyPI has as
# source only for Linux, and `kinit`. This stage builds their wheels against MIT Kerberos and fetches the Debian
# packages kinit and that wheel need at run time (resolved before the compiler is installed,
# on the same base, so they are exactly what the product stage lacks): the product stage
# installs both from here, needing no compiler, no -dev package and no apt lists of its own.
# Python's headers come with python:*-slim; a Debian python3 base needs python3-dev.
FROM ${BASE} AS kerberos-build
WORKDIR /src
COPY constraints.txt ./
# hadolint ignore=DL3008
RUN apt-get update -o Acquire::Languages=none \
    && mkdir -p /kerberos/debs/partial \
    && apt-get install -y --no-install-recommends --download-only \
       -o Dir::Cache::archives=/kerberos/debs krb5-user libgssapi-krb5-2 \
    && rm -rf /kerberos/debs/partial /kerberos/debs/lock \
    && apt-get install -y --no-install-recommends gcc libc6-dev libkrb5-dev \
    && { python -c "import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_path('include') + '/Python.h'))" \
         || apt-get install -y --no-install-recommends python3-dev; } \
    && rm -rf /var/lib/apt/lists/* \
    && pip wheel --no-cache-dir --no-deps --constraint constraints.txt \
       --wheel-dir /kerberos/wheels pykerberos gssapi

FROM ${BASE} AS exporter

LABEL org.opencontainers.image.title="vmm-cert-exporter" \
      org.opencontainers.image.description="Prometheus exporter for SCVMM self-signed certificates"

WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY exporter/vmm_cert_exporter ./exporter/vmm_cert_exporter
# a copy, not a RUN --mount: buildah 1.28 cannot bind a stage it took from its layer cache
COPY --from=kerberos-build /kerberos ./kerberos
# one layer: kinit and the libraries pykerberos and gssapi link (transport: kerberos), from
# the stage above (their copy goes with the sources); install with the exact versions make
# test ran with (constraints.txt), the kerberos extra's pykerberos and gssapi from the wheels
# built above, then drop the sources and pip's cache; the receiver's journal directory
# (receiver.journal's default), owned by the user, so a volume mounted there is writable;
# the configuration's directory, where a read-only root still lets a volume be mounted
RUN DEBIAN_FRONTEND=noninteractive dpkg --install kerberos/debs/*.deb \
    && pip install --no-cache-dir --constraint constraints.txt --find-links kerberos/wheels \
       --only-binary pykerberos,gssapi ".[kerberos]" \
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
