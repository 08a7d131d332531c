# A stand-in for python:3.11-slim-bookworm, built by scripts/containers.sh where Docker Hub cannot
# be reached: Debian's own Python 3.11 as `python` and `python3`, with venv and pip, the shared
# libpython3.11 (as the official image has in /usr/local/lib) and the CA certificates.
# Debian suite: bookworm
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python3
CMD ["python3"]
