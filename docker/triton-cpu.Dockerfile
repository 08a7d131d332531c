# Triton Inference Server for CPU hosts, with no NGC image: the Triton server that the nvidia-pytriton
# wheel carries, ONNX Runtime in Triton's python backend (the CPU rendering: backend
# onnxruntime_python, configs/cpu.pbtxt) and the entrypoint of the GPU image
# (docker/triton-entrypoint.sh: fetch, verify, prepare, serve). Models live in the /models volume.
#
#   docker build -f docker/triton-cpu.Dockerfile -t triton-faceswap-triton-cpu:0.1.0 .
#
# PYTHON_IMAGE: any Debian bookworm image with Python 3.8-3.13 as `python` (venv included) and its
# shared libpython, which Triton's python backend stub embeds.
# Where pip needs a CA bundle of the network's own: --secret id=pip_ca,src=FILE (never in a layer).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/triton-image.txt requirements/triton-cpu-image.txt /tmp/
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/triton-image.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/triton-cpu-image.txt
# Triton's own layout: tritonserver on the PATH; in /opt/tritonserver/backends, where it looks by
# default, the python backend with the stub for this Python.
RUN site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && version=$(/opt/venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    && server=$site/pytriton/tritonserver \
    && install -d /opt/tritonserver/backends/python \
    && cp "$server/backends/python/libtriton_python.so" "$server/backends/python/triton_python_backend_utils.py" \
        "$server/python_backend_stubs/$version/triton_python_backend_stub" /opt/tritonserver/backends/python/ \
    && ln -s "$server/bin/tritonserver" /opt/venv/bin/tritonserver \
    && echo "$site/nvidia_pytriton.libs" > /opt/tritonserver/ld.so.conf

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tritonserver /opt/tritonserver
# The server's bundled libraries (libcudart among them, which the stub links even on a CPU) for the
# copied backend; a user of our own (uid 10001) who owns /models.
RUN mv /opt/tritonserver/ld.so.conf /etc/ld.so.conf.d/nvidia-pytriton.conf \
    && ldconfig \
    && groupadd --system --gid 10001 faceswap \
    && useradd --system --uid 10001 --gid faceswap --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin faceswap \
    && install -d -o faceswap -g faceswap /models

# The python-based backend of the CPU rendering (modelplane.configs.CPU_BACKEND), and the model plane.
COPY modelplane/backend/model.py /opt/tritonserver/backends/onnxruntime_python/model.py
COPY pyproject.toml /opt/faceswap/
COPY modelplane /opt/faceswap/modelplane
COPY --chmod=755 docker/triton-entrypoint.sh /opt/faceswap/docker/

# The stub finds the venv's packages (numpy<2, ONNX Runtime) through the python3 on the PATH.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    MODEL_DIR=/models \
    TRITON_RENDERING=cpu \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/models"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=20m --retries=6 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
# faceswap, by number: Kubernetes' runAsNonRoot can only check a numeric user.
USER 10001:10001
ENTRYPOINT ["/opt/faceswap/docker/triton-entrypoint.sh"]
