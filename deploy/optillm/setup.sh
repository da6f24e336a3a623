#!/usr/bin/env bash
# Idempotent setup of optillm, the TTC proxy that `ttc-gateway bench strategies` compares with.
#
#   deploy/optillm/setup.sh            # from anywhere; paths are relative to the repo root
#
# Environment:
#   OPTILLM_VENV     venv path (default .venv-optillm, relative to the repo root)
#   OPTILLM_VERSION  optillm version (default 0.4.0, the one measured)
#   TORCH_VERSION    torch installed before optillm (default 2.13.0)
#   PYTHON           interpreter used to create the venv (default python3)
#
# optillm declares `torch` (and transformers, peft, bitsandbytes, ...) as hard dependencies,
# although its proxy mode never loads a model. On Linux x86_64 a plain `pip install torch` pulls
# several GiB of CUDA libraries (nvidia-*). So torch is installed first from the CPU wheel and
# pinned with a constraint while optillm and its dependencies install; the script then refuses
# to finish if any nvidia-* package got in. The venv is separate from the gateway's: optillm
# pins its own openai, flask and transformers.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

VENV="${OPTILLM_VENV:-.venv-optillm}"
VERSION="${OPTILLM_VERSION:-0.4.0}"
TORCH="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"

log() { printf '[optillm-setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
else
  log "venv $VENV exists"
fi
VPY="$VENV/bin/python"
version_of() { "$VPY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH" > "$constraints"

if [[ "$(version_of torch)" == "$TORCH"* ]]; then
  log "torch $(version_of torch) already installed"
else
  # On these machines pip's find-links holds the CPU wheel (torch-2.13.0+cpu), which wins over
  # PyPI's CUDA build; elsewhere the nvidia-* check below stops the script.
  log "installing torch==$TORCH (CPU build)"
  "$VPY" -m pip install --progress-bar off "torch==$TORCH"
fi

if [[ "$(version_of optillm)" == "$VERSION" ]]; then
  log "optillm $VERSION already installed"
else
  log "installing optillm==$VERSION (a few minutes; torch held at $TORCH)"
  "$VPY" -m pip install --progress-bar off -c "$constraints" "optillm==$VERSION"
fi

cuda="$("$VPY" -m pip list --format=freeze 2>/dev/null | grep -i '^nvidia-' || true)"
if [[ -n "$cuda" ]]; then
  log "CUDA packages were pulled in, which the proxy never needs:"
  printf '%s\n' "$cuda" >&2
  exit 1
fi

"$VPY" -c 'import optillm.server' > /dev/null
log "done: $VENV/bin/optillm (optillm $VERSION, torch $(version_of torch))"
