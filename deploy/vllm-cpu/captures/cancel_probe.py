"""Probe: close a streaming n=4 request after 20 chunks; time until vllm:num_requests_running is 0.

Run with the gateway's python (needs httpx):  python deploy/vllm-cpu/captures/cancel_probe.py [URL]
Note: breaking out of httpx's iter_lines() already closes the connection (httpcore closes the
stream on GeneratorExit), so the disconnect happens at the `break`.
"""

import re
import sys
import threading
import time

import httpx

U = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18090"


def metric(name):
    t = httpx.get(U + "/metrics").text
    return float(re.search(r"^" + re.escape(name) + r"\{[^}]*\} ([0-9.e+-]+)$", t, re.M).group(1))


g0 = metric("vllm:generation_tokens_total")
seen, stop, t0 = [], False, time.monotonic()


def poll():
    while not stop:
        seen.append((time.monotonic() - t0, metric("vllm:num_requests_running")))
        time.sleep(0.02)


th = threading.Thread(target=poll)
th.start()
body = {
    "model": "smol",
    "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    "n": 4,
    "max_tokens": 200,
    "temperature": 1.0,
    "stream": True,
    "stream_options": {"include_usage": True, "continuous_usage_stats": True},
}
with httpx.stream("POST", U + "/v1/chat/completions", json=body, timeout=60) as r:
    n = 0
    for line in r.iter_lines():
        if line.startswith("data: "):
            n += 1
            if n == 20:
                t20 = time.monotonic() - t0
                break
time.sleep(2)
stop = True
th.join()
peak = max(v for _, v in seen)
zero = next(t for t, v in seen if t > t20 and v == 0)
g1 = metric("vllm:generation_tokens_total")
print(
    f"20th chunk at {t20:.3f}s; peak running={peak:.0f}; running==0 observed {zero - t20:.3f}s after close; "
    f"generated {g1 - g0:.0f} of 800 requested tokens"
)
