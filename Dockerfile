# CPU image for the tiny demo and tests. For GPU clusters start from an NVIDIA PyTorch image instead and keep
# the same `pip install -e .` (torch is then already present).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ringmoe
COPY . .
RUN pip install --no-cache-dir -e '.[dev]'
ENV OMP_NUM_THREADS=1
CMD ["ringmoe", "demo", "--output", "/tmp/ringmoe-demo"]
