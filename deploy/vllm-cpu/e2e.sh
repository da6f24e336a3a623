#!/usr/bin/env bash
# One command for the gateway's end-to-end tests against real vLLM on CPU:
# set up vLLM (idempotent), start it, run tests/e2e/test_vllm.py, stop it.
#
#   deploy/vllm-cpu/e2e.sh [pytest args...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/../.."

PORT="${VLLM_PORT:-18090}"
bash deploy/vllm-cpu/setup.sh
log="${TMPDIR:-/tmp}/vllm-e2e-$PORT.log"
deploy/vllm-cpu/serve.sh 127.0.0.1 "$PORT" > "$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
echo "vLLM starting (pid $pid, log $log)"
TTC_TEST_VLLM_URL="http://127.0.0.1:$PORT" python3 -m pytest tests/e2e/test_vllm.py -v -s "$@"
