#!/usr/bin/env bash
# Install convae and what it needs on a fresh Debian/Ubuntu machine with Python >= 3.10.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# PyTorch first, pinned to the CPU wheel this project is tested with, so that
# the `torch>=2.4` requirement below does not pull a multi-GB CUDA build.
# With a GPU, install the torch build you want before running this script.
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install -q -e ".[dev]"

# From Debian's packages, when apt is there and we may use it: Fashion-MNIST (the main job's data) and
# Chromium (the review page's tests open it in a real browser).
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    wanted=""
    [ -d /usr/share/datasets/fashion-mnist ] || wanted="$wanted dataset-fashion-mnist"
    command -v chromium >/dev/null || wanted="$wanted chromium"
    if [ -n "$wanted" ]; then
        (apt-get update -qq && apt-get install -y -qq $wanted) >/dev/null 2>&1 \
            || echo "setup: could not install$wanted (without Fashion-MNIST the main job uses scikit-learn's digits; without chromium the review page's tests fail)" >&2
    fi
fi
