# GPU-cluster image: CUDA 12.8 runtime, the pinned CUDA build of torch, DeepSpeed with its fused ops compiled
# ahead of time (no JIT build on first use on every node), megatron-core, and this package.
#   docker build -t ringmoe:cuda .
#   apptainer build ringmoe.sif docker-daemon://ringmoe:cuda     (or: apptainer build ringmoe.sif apptainer.def)
# Pins are the ones pyproject.toml allows; tests/unit/test_containers.py keeps them in step.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv git build-essential \
      ninja-build libaio-dev gdal-bin \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Hopper and Ampere; override for other GPUs.
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
RUN pip install --upgrade pip setuptools wheel \
 && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128

# DeepSpeed ops built now: fused Adam, CPU Adam (ZeRO offload) and the utils; async I/O for NVMe offload.
RUN DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 DS_BUILD_AIO=1 \
    pip install deepspeed==0.19.8 \
 && pip install megatron-core==0.16.1 \
 && ds_report

WORKDIR /opt/ringmoe
COPY . .
RUN pip install -e .
ENV OMP_NUM_THREADS=1
CMD ["ringmoe", "--help"]
