#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend; fails if any backend fails.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@" tests || status=1
done
exit $status
