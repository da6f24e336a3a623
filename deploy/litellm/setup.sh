#!/usr/bin/env bash
# Idempotent setup of the LiteLLM proxy, the peer that `ttc-gateway bench overhead` compares with.
#
#   deploy/litellm/setup.sh            # from anywhere; paths are relative to the repo root
#
# Environment:
#   LITELLM_VENV     venv path (default .venv-litellm, relative to the repo root)
#   LITELLM_VERSION  litellm version (default 1.106.2, the one measured in the README's overhead table;
#                    never 1.107.0, a compromised release)
#   PYTHON           interpreter used to create the venv (default python3)
#
# The venv is separate from the gateway's: litellm[proxy] pins its own fastapi, uvicorn,
# pydantic and openai, which must not leak into the gateway's environment.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

VENV="${LITELLM_VENV:-.venv-litellm}"
VERSION="${LITELLM_VERSION:-1.106.2}"
PYTHON="${PYTHON:-python3}"

log() { printf '[litellm-setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ "$VERSION" == "1.107.0" ]]; then
  log "litellm 1.107.0 is a compromised release; pick another LITELLM_VERSION"
  exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
else
  log "venv $VENV exists"
fi
VPY="$VENV/bin/python"

installed="$("$VPY" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true)"
if [[ "$installed" == "$VERSION" && -x "$VENV/bin/litellm" ]]; then
  log "litellm $VERSION already installed"
else
  log "installing litellm[proxy]==$VERSION (a few minutes)"
  "$VPY" -m pip install --progress-bar off "litellm[proxy]==$VERSION"
fi

# LITELLM_LOCAL_MODEL_COST_MAP: use the bundled price map; the remote one is out of reach here.
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --help > /dev/null
log "done: $VENV/bin/litellm (litellm $VERSION); config: gateway/bench/litellm.yaml"
