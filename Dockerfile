# bids_anomaly as a BIDS-App image.
#
#   docker build -t bids_anomaly:0.1.0 .                                      # CUDA-enabled torch
#   docker build -t bids_anomaly:0.1.0-cpu --build-arg TORCH_VARIANT=cpu .    # CPU-only torch
#
# Build arguments
#   BASE_IMAGE       a Debian 12 (bookworm) image; gets Python 3.11 from apt when it has none
#   TORCH_VERSION    the torch release (keep it equal to the Makefile's TORCH)
#   TORCH_VARIANT    cuda (PyPI's CUDA build, runs on CPU too) or cpu (CPU-only, much smaller)
#   TORCH_INDEX_URL  where torch comes from (default: PyPI for cuda, the PyTorch CPU index for cpu)
#   BIDS_VALIDATOR_VERSION  the official BIDS validator, npm package bids-validator (keep it equal
#                    to the Makefile's BIDS_VALIDATOR)
#   WHEELHOUSE       a folder of wheels mounted into the build (podman build -v): offline builds
#   VERSION          the package version; the build fails when it differs from pyproject.toml
#   VCS_REF          the git commit, recorded as a label
#   IMAGE_TAG        the tag recorded in the outputs' dataset_description.json (e.g. with -cpu)
# Behind a TLS-intercepting proxy give pip and npm the proxy's CA as a build secret; it is never
# stored in the image: --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt
# Details: docs/containers.md; a full build-and-run check: scripts/container-smoke.sh.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtual environment with torch, the locked dependencies and the package ----
FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
RUN if ! command -v python3.11 > /dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends \
            python3=3.11.2-1+b1 python3-venv=3.11.2-1+b1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Torch first and pinned, from pip's configured index unless TORCH_INDEX_URL names another (no
# address is built in): left to the dependency resolver, a plain "torch" requirement would pull
# whichever build the index serves. (DL3013: the pin is in
# ${torch}, which hadolint cannot read.)
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cuda
ARG TORCH_INDEX_URL=
ARG WHEELHOUSE=
COPY requirements-container.txt /src/
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && case "${TORCH_VARIANT}" in \
        cuda) torch="torch==${TORCH_VERSION}" ;; \
        cpu) torch="torch==${TORCH_VERSION}+cpu" \
            && if [ -z "${TORCH_INDEX_URL}${WHEELHOUSE}" ]; then \
                echo "TORCH_VARIANT=cpu needs TORCH_INDEX_URL (PyTorch's CPU wheel index)" \
                    "or a WHEELHOUSE that holds the wheel" >&2; exit 64; \
            fi ;; \
        *) echo "TORCH_VARIANT must be cuda or cpu, not '${TORCH_VARIANT}'" >&2; exit 64 ;; \
    esac \
    && pip install ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} \
        ${WHEELHOUSE:+--find-links "${WHEELHOUSE}"} "${torch}" \
    && pip install ${WHEELHOUSE:+--find-links "${WHEELHOUSE}"} -r /src/requirements-container.txt

# The official BIDS validator into /opt/bids-validator, from Debian's Node.js and npm (builder
# only: the runtime needs Node.js alone). The script unpacks the package's bundled command line
# without its 900 listed dependencies; see scripts/install-bids-validator.sh.
ARG BIDS_VALIDATOR_VERSION=1.15.0
COPY scripts/install-bids-validator.sh /src/scripts/
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export NPM_CONFIG_CAFILE=/run/secrets/ca_bundle; fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        nodejs=18.20.4+dfsg-1~deb12u2 npm=9.2.0~ds1-1 \
    && rm -rf /var/lib/apt/lists/* \
    && /src/scripts/install-bids-validator.sh "${BIDS_VALIDATOR_VERSION}" /opt/bids-validator \
    && /opt/bids-validator/node_modules/.bin/bids-validator --version

# The package itself (every dependency is already locked above), then the checks. torch's C++
# headers and test programs go (about 130 MB): the runtime image has no compiler, and nothing
# here builds extensions.
ARG VERSION=0.1.0
COPY . /src/
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-deps /src \
    && pip check \
    && rm -rf /opt/venv/lib/python3.11/site-packages/torch/include \
        /opt/venv/lib/python3.11/site-packages/torch/test \
    && installed="$(bids_anomaly --version)" \
    && if [ "${installed}" != "bids_anomaly ${VERSION}" ]; then \
        echo "build argument VERSION=${VERSION} but the package says: ${installed}" >&2; exit 1; \
    fi

# ---- runtime: the interpreter, the virtual environment and a non-root user; no build tools ----
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs=18.20.4+dfsg-1~deb12u2 \
    && if ! command -v python3.11 > /dev/null; then \
        apt-get install -y --no-install-recommends python3=3.11.2-1+b1; \
    fi \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --user-group bids_anomaly \
    && chmod -R go=u /home/bids_anomaly
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/bids-validator /opt/bids-validator

ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG IMAGE_TAG=bids_anomaly:${VERSION}
LABEL org.opencontainers.image.title="bids_anomaly" \
      org.opencontainers.image.description="BIDS-App for anomaly detection in brain MRI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/bids-anomaly/bids_anomaly" \
      org.opencontainers.image.url="https://github.com/bids-anomaly/bids_anomaly" \
      org.opencontainers.image.licenses="Apache-2.0"

# Every cache goes under /tmp, so the image runs with --read-only and a tmpfs on /tmp; nothing is
# downloaded at run time (NIPYPE_NO_ET: no version check; no templates or weights are fetched).
# OMP_NUM_THREADS is left unset on purpose: --omp-nthreads sets it.
ENV PATH=/opt/venv/bin:/opt/bids-validator/node_modules/.bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/bids_anomaly \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    XDG_CACHE_HOME=/tmp/cache \
    TORCH_HOME=/tmp/torch \
    TRITON_CACHE_DIR=/tmp/triton \
    NIPYPE_NO_ET=1 \
    NIPYPE_CONFIG_DIR=/tmp/nipype \
    BIDS_ANOMALY_CONTAINER=${IMAGE_TAG}

USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["bids_anomaly"]
CMD ["--help"]
