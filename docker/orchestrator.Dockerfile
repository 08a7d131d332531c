# The orchestrator: HTTP API, job workers and media I/O. It talks to Triton over gRPC and runs no
# model itself, so the image holds the base dependencies only (no [models] or [test] extras).
#
#   docker build -f docker/orchestrator.Dockerfile -t triton-faceswap-orchestrator:0.1.0 .
#
# PYTHON_IMAGE: any Debian bookworm image with Python 3.11 as `python` (venv included).
# Where pip needs a CA bundle of the network's own: --secret id=pip_ca,src=FILE (never in a layer).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY orchestrator ./orchestrator
COPY modelplane ./modelplane
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 faceswap \
    && useradd --system --uid 10001 --gid faceswap --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin faceswap \
    && install -d -o faceswap -g faceswap /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FACESWAP_HOST=0.0.0.0 \
    FACESWAP_PORT=8080 \
    FACESWAP_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
# /healthz: the process answers. (/readyz also needs Triton: not a reason to restart this container.)
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['FACESWAP_PORT'] + '/healthz', timeout=4)"]
# faceswap, by number: Kubernetes' runAsNonRoot can only check a numeric user.
USER 10001:10001
ENTRYPOINT ["python", "-m", "orchestrator", "serve"]
