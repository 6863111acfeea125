# BERT for PyTorch. The default base is an NGC PyTorch container, which brings CUDA, cuDNN, NCCL and
# PyTorch itself. Other bases through FROM_IMAGE_NAME (docs/docker.md): a CPU image on
# python:3.11-slim-bookworm, or a Debian base made with scripts/docker/debian_base.sh where no registry
# can be reached. Build with scripts/docker/build.sh, run with scripts/docker/launch.sh.
ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:24.12-py3
FROM ${FROM_IMAGE_NAME}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# numactl for bind.sh, make for `make demo`; the rest for downloading and unpacking corpora, as in the
# original image. python3-venv only where python3 cannot make a virtual environment with pip (a plain
# Debian or Ubuntu base; it brings python3 itself where the base has none).
# Versions are left to the base image's release: pinning would break on every base tag bump.
# hadolint ignore=DL3008
RUN packages=(numactl make pbzip2 pv bzip2 cabextract iputils-ping) \
 && { python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv); } \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" \
 && rm -rf /var/lib/apt/lists/*

# Everything pip installs goes into one virtual environment: Debian-based Pythons refuse system-wide
# pip installs (PEP 668), and --system-site-packages keeps the base image's own PyTorch visible.
# VENV and VENV_PREBUILT tell the Makefile to use it as built (`make demo` works in the container).
ENV VENV=/opt/venv VENV_PREBUILT=1
ENV PATH=${VENV}/bin:${PATH}
RUN python3 -m venv --system-site-packages "$VENV"

ENV BERT_PREP_WORKING_DIR=/workspace/bert/data
WORKDIR /workspace/bert

# Where pip looks, for CPU-only torch or machines without PyPI. pip reads these build arguments as
# environment variables; they are not kept in the image. For example
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/   (a served wheelhouse)
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
# TORCH_SPEC empty keeps the base image's PyTorch (NGC's is built for its CUDA stack) and drops torch
# from the requirements so pip can never replace it; otherwise it is installed first, on its own, as
# the Makefile does (e.g. torch==2.13.0 with a CPU index). Add requirements-serve.txt to REQUIREMENTS
# for ONNX export and the Triton client.
ARG TORCH_SPEC=""
ARG REQUIREMENTS="requirements.txt"
COPY requirements*.txt ./
# TORCH_SPEC is the pin (hadolint cannot see into the variable).
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_SPEC" ]; then pip install --no-cache-dir "$TORCH_SPEC"; fi \
 && for file in ${REQUIREMENTS}; do grep -v -E '^torch([^A-Za-z0-9_.-]|$)' "$file"; done > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && python -c 'import torch' \
 && touch "$VENV/.installed"

COPY . .
# The checkout in editable mode (pyproject.toml), as the Makefile installs it: the scripts in data/,
# triton/ and benchmarks/ import the top-level modules, also from the checkout launch.sh mounts here.
RUN pip install --no-cache-dir --no-deps -e .
