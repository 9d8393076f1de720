#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: data sets from Debian, a venv with all three backends.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages that carry the data sets: Fashion-MNIST (images), the Python 3.11 docs (text).
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
[ -d /usr/share/doc/python3.11/html/_sources/library ] || missing+=(python3.11-doc)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} not installed (apt-get install ${missing[*]}); the tests that need them will skip" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
