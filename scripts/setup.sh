#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: Fashion-MNIST from Debian, a venv with all three backends.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); its tests will skip" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
