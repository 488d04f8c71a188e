#!/usr/bin/env bash
# Run here, once, before the device call: fills the two ignored folders that the `run` tool
# carries to the GPU machine (carry: [".whl", ".data"]), which has torch but not the rest.
#   .whl/   the wheels of ../shared/device/wheels (optuna, sqlalchemy, plotly, torchinfo, ...)
#           plus what this project also imports and that machine lacks (tomli-w, safetensors,
#           optuna-dashboard, bottle) and what the gpu-marked tests import (hypothesis with
#           attrs and sortedcontainers), downloaded for its Python 3.12 on x86-64
#   .data/  the CIFAR-10 JPEG tarball
# scripts/device_check.sh installs the wheels with --no-deps and unpacks the data there.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${NAS_SHARED:-../shared}
PIP=${NAS_PIP:-.venv/bin/pip}
mkdir -p .whl .data
cp "$SHARED"/device/wheels/*.whl .whl/
"$PIP" download -q --only-binary=:all: --no-deps --implementation cp --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d .whl tomli-w safetensors optuna-dashboard bottle \
  hypothesis attrs sortedcontainers
cp "$SHARED"/data/cifar10-jpeg.tar.gz .data/
du -sh .whl .data
