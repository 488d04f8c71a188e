#!/usr/bin/env bash
# Run here, once, before the device call: fills the two ignored folders that the `run` tool
# carries to the GPU machine (carry: [".whl", ".data"]), which has torch but not the rest.
#   .whl/   the wheels of ../shared/device/wheels (optuna, sqlalchemy, plotly, torchinfo, ...)
#           plus EXTRA below: what else this project and its gpu-marked tests import that the
#           machine lacks, downloaded for its Python 3.12 on x86-64
#   .data/  the CIFAR-10 JPEG tarball
# scripts/device_check.sh installs the wheels with --no-deps and unpacks the data there.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${NAS_SHARED:-../shared}
PIP=${NAS_PIP:-.venv/bin/pip}
# --no-deps: the needs of each are named here too, or are on the machine already. It also
# lacks psycopg, kaleido, onnx, onnxruntime, onnxscript and playwright, and none is carried:
# only code and tests that do not run there import them, and only where they are used
# (tests/test_gpu_collection.py collects the gpu-marked tests without them).
EXTRA=(
  tomli-w           # space/_toml.py writes TOML; tests/search/searchkit.py imports it at the top
  safetensors       # search/checkpoint.py: a trained model's weights file
  optuna-dashboard  # search/report.py and search/retrain.py (trial notes), search/dashboard.py
  bottle            # optuna-dashboard's one dependency the machine lacks
  hypothesis        # tests/strategies.py and tests/space/test_budget.py, which the gpu-marked
                    # tests/space/test_families.py imports at the top
  sortedcontainers  # hypothesis's one dependency (attrs, once another, is no longer)
)
mkdir -p .whl .data
cp "$SHARED"/device/wheels/*.whl .whl/
"$PIP" download -q --only-binary=:all: --no-deps --implementation cp --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d .whl "${EXTRA[@]}"
cp "$SHARED"/data/cifar10-jpeg.tar.gz .data/
du -sh .whl .data
