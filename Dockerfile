# BERT for PyTorch on an NGC PyTorch container, which brings CUDA, cuDNN, NCCL and PyTorch itself.
# Build with scripts/docker/build.sh, run with scripts/docker/launch.sh.
ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:24.12-py3
FROM ${FROM_IMAGE_NAME}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# numactl for bind.sh; the rest for downloading and unpacking corpora, as in the original image.
# Versions are left to the base image's Ubuntu release: pinning would break on every base tag bump.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends numactl pbzip2 pv bzip2 cabextract iputils-ping \
 && rm -rf /var/lib/apt/lists/*

ENV BERT_PREP_WORKING_DIR=/workspace/bert/data
WORKDIR /workspace/bert

# The base image's PyTorch is built for its CUDA stack: torch is dropped from the requirements so
# pip can never replace it. Add requirements-serve.txt for ONNX export and the Triton client.
ARG REQUIREMENTS="requirements.txt"
COPY requirements*.txt ./
RUN for file in ${REQUIREMENTS}; do grep -v -E '^torch([^A-Za-z0-9_.-]|$)' "$file"; done > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY . .
