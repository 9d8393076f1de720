#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend; fails if any backend fails.
#
# The three backends run at the same time, each in its own pytest process, and each one's report is
# printed whole when it finishes. JAX spends most of its time compiling on one thread, so on a 2-core
# machine the other backends fit beside it; JAX, the longest, is itself split over two pytest-xdist
# workers (a test file stays on one worker, so module fixtures are built once).
# KERAS_D2V2_SERIAL_TESTS=1 runs the backends one after another instead, with live output.
# PyTorch gets one intra-op thread: its OpenMP workers spin while waiting and slow everything down
# when the cores are shared.
set -uo pipefail
cd "$(dirname "$0")/.."
backends=(tensorflow jax torch)

run_backend() {
  local threads=() workers=()
  if [ -z "${KERAS_D2V2_SERIAL_TESTS:-}" ]; then
    [ "$1" = torch ] && threads=(OMP_NUM_THREADS=1)
    [ "$1" = jax ] && .venv/bin/python -c "import xdist" 2>/dev/null && workers=(-n 2 --dist loadfile)
  fi
  env "${threads[@]}" KERAS_BACKEND="$1" TF_CPP_MIN_LOG_LEVEL=3 \
    .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "${workers[@]}" "${@:2}" tests
}

status=0
if [ -n "${KERAS_D2V2_SERIAL_TESTS:-}" ]; then
  for backend in "${backends[@]}"; do
    echo "=== KERAS_BACKEND=$backend ==="
    run_backend "$backend" "$@" || status=1
  done
  exit $status
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
declare -A pid_of
for backend in "${backends[@]}"; do
  run_backend "$backend" "$@" >"$logs/$backend.log" 2>&1 &
  pid_of[$backend]=$!
done
echo "running the suite on ${backends[*]} at once; each report follows when its backend finishes"
remaining=("${backends[@]}")
while [ ${#remaining[@]} -gt 0 ]; do
  running=()
  for backend in "${remaining[@]}"; do running+=("${pid_of[$backend]}"); done
  wait -n "${running[@]}"
  still=()
  for backend in "${remaining[@]}"; do
    if kill -0 "${pid_of[$backend]}" 2>/dev/null; then
      still+=("$backend")
    else
      wait "${pid_of[$backend]}"
      rc=$?
      echo "=== KERAS_BACKEND=$backend (exit $rc, finished after ${SECONDS}s) ==="
      cat "$logs/$backend.log"
      [ $rc -eq 0 ] || status=1
    fi
  done
  remaining=("${still[@]}")
done
exit $status
