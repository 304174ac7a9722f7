# bnserve: one uvicorn process per container; scale with replicas, not workers.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# CPU-only torch first, so the project's unpinned torch dependency pulls no CUDA packages.
RUN pip install torch --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install . && useradd --create-home --uid 10001 bnserve
COPY --chown=bnserve:bnserve models /models

USER bnserve
ENV BNSERVE_MODELS=/models BNSERVE_HOST=0.0.0.0 BNSERVE_PORT=8000 BNSERVE_GRPC_PORT=8001
VOLUME ["/models"]
# HTTP (REST, metrics, status page) and gRPC (Open Inference Protocol).
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
CMD ["bnserve", "serve"]
