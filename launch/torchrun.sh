#!/usr/bin/env bash
# Launch `ringmoe train` with torchrun's c10d rendezvous.
#   NNODES=1 NPROC_PER_NODE=2 launch/torchrun.sh --config configs/tiny.yaml train.steps=20
# Multi-node: set NNODES, NODE_RANK is not needed (c10d assigns ranks), RDZV_ENDPOINT=<host of node 0>:29400.
set -euo pipefail
: "${NNODES:=1}"
: "${NPROC_PER_NODE:=2}"
: "${RDZV_ENDPOINT:=127.0.0.1:29400}"
: "${RDZV_ID:=ringmoe-${SLURM_JOB_ID:-local}}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m torch.distributed.run \
  --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="$RDZV_ID" \
  -m ringmoe.cli.main train "$@"
