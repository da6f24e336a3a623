"""Probe: n=8 request with an 896-token prompt (7 KV blocks of 128), twice; prefix-cache counters before/after.

python deploy/vllm-cpu/captures/prefix_probe.py [TAG] [MAX_TOKENS]
"""

import json
import os
import re
import sys
import time

import httpx

U = "http://127.0.0.1:18090"
NAMES = [
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:generation_tokens_total",
]


def snap():
    t = httpx.get(U + "/metrics").text
    return {
        n: float(re.search(r"^" + re.escape(n) + r"\{[^}]*\} ([0-9.e+-]+)$", t, re.M).group(1))
        for n in NAMES
    }


tag = sys.argv[1] if len(sys.argv) > 1 else "a"
max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 64
passage = " ".join(
    f"Fact {i}: the warehouse in district {i} stores {i * 7} crates of {['apples', 'bolts', 'cables', 'drums'][i % 4]}."
    for i in range(40)
)
q = (
    passage
    + f"\n\nQuestion ({tag}): how many crates are stored in district 12? Think step by step."
)
body = {
    "model": "smol",
    "messages": [{"role": "user", "content": q}],
    "n": 8,
    "max_tokens": max_tokens,
    "temperature": 0.8,
}
out = []
for rnd in (1, 2):
    b = snap()
    t0 = time.monotonic()
    r = httpx.post(U + "/v1/chat/completions", json=body, timeout=300).json()
    dt = time.monotonic() - t0
    a = snap()
    d = {k.replace("vllm:", ""): a[k] - b[k] for k in NAMES}
    print(f"round {rnd}: {dt:.2f}s usage={r['usage']} choices={len(r['choices'])}")
    print("   before:", {k.replace("vllm:", ""): v for k, v in b.items()})
    print("   after: ", {k.replace("vllm:", ""): v for k, v in a.items()})
    print("   delta: ", d)
    out.append(
        {
            "round": rnd,
            "seconds": round(dt, 2),
            "usage": r["usage"],
            "before": b,
            "after": a,
            "delta": d,
        }
    )
json.dump(
    out,
    open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"prefix_n8_{tag}.json"), "w"),
    indent=1,
)
