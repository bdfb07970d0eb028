#!/usr/bin/env bash
# Launch `ringmoe train` with the deepspeed launcher. Inside a SLURM allocation a hostfile is generated from
# the allocated nodes; outside one, it runs on this machine.
#   NPROC_PER_NODE=8 launch/deepspeed.sh --config configs/model/ringmoe_14b7.yaml
set -euo pipefail
: "${NPROC_PER_NODE:=2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
args=(--num_gpus "$NPROC_PER_NODE" --master_port "${MASTER_PORT:-29500}")
if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
  hostfile="${TMPDIR:-/tmp}/ringmoe-hostfile-${SLURM_JOB_ID}"
  scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=${NPROC_PER_NODE}/" > "$hostfile"
  args=(--hostfile "$hostfile" --master_addr "$(head -n1 "$hostfile" | cut -d' ' -f1)" --master_port "${MASTER_PORT:-29500}")
fi
exec deepspeed "${args[@]}" --module ringmoe.cli.main train "$@"
