#!/usr/bin/env bash
# Submit a parallel ingest: an N-task job array building the parts, then the manifest job once all succeeded.
#   slurm/submit_ingest.sh N --config configs/data/demo_build.yaml out_dir=/data/shards [workers=4 ...]
# Prints the two job ids ("ARRAY_ID MANIFEST_ID").
set -euo pipefail
tasks="${1:?usage: submit_ingest.sh N --config CONFIG [key=value ...]}"
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
array_id=$(sbatch --parsable --array="0-$((tasks - 1))" "$here/ingest_array.sbatch" "$@" | cut -d';' -f1)
manifest_id=$(sbatch --parsable --dependency="afterok:${array_id}" "$here/ingest_manifest.sbatch" "$@" | cut -d';' -f1)
echo "$array_id $manifest_id"
