# Triton Inference Server with the model plane: on start, docker/triton-entrypoint.sh fetches and
# verifies the models into the /models volume, prepares the repository, then runs tritonserver.
# TRITON_IMAGE is the NGC release (Python 3.12); another release must keep its python backend.
# No NGC image or GPU at hand: docker/triton-cpu.Dockerfile serves the CPU rendering.
#
#   docker build -f docker/triton.Dockerfile -t triton-faceswap-triton:0.1.0 .

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}

# Ubuntu 24.04 marks its Python externally managed; this image is that Python's only user.
# Where pip needs a CA bundle of the network's own: --secret id=pip_ca,src=FILE (never in a layer).
COPY requirements/triton-image.txt /tmp/triton-image.txt
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -r /tmp/triton-image.txt \
    && rm /tmp/triton-image.txt

# A user of our own (the image's triton-server user is uid 1000); /models is its volume.
RUN groupadd --gid 10001 faceswap \
    && useradd --uid 10001 --gid faceswap --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin faceswap \
    && install -d -o faceswap -g faceswap /models

# The python-based backend of the CPU rendering (modelplane.configs.CPU_BACKEND).
COPY modelplane/backend/model.py /opt/tritonserver/backends/onnxruntime_python/model.py
COPY pyproject.toml /opt/faceswap/
COPY modelplane /opt/faceswap/modelplane
COPY --chmod=755 docker/triton-entrypoint.sh /opt/faceswap/docker/

ENV MODEL_DIR=/models PYTHONDONTWRITEBYTECODE=1
VOLUME ["/models"]
EXPOSE 8000 8001 8002
# faceswap, by number: Kubernetes' runAsNonRoot can only check a numeric user.
USER 10001:10001
# NVIDIA's entrypoint first (banner, driver and CUDA compatibility checks), then ours.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "/opt/faceswap/docker/triton-entrypoint.sh"]
