#!/usr/bin/env bash
# Train and evaluate SEVLM on all GPUs of one machine: one process, the batch split over the GPUs.
# Run from the repository root: bash launch/one_host.sh
# Change the EDIT lines; anything after the script's name is passed on (--config.x=y overrides).
set -euo pipefail

CONFIG=configs/sevlm.py:artemis_v1                                    # EDIT: config and variants
WORKDIR=runs/artemis_v1                                               # EDIT: checkpoints and results
DATA=(--config.data.csv=/data/artemis/artemis_dataset_release_v0.csv  # EDIT: your data
      --config.data.images=/data/wikiart
      --config.data.lexicon=/data/NRC-VAD-Lexicon.txt)
BATCH=32                     # EDIT: the global batch (all GPUs together); a multiple of the GPU count
PARAMS=replicated            # EDIT: fsdp splits large parameters and Adam state over the GPUs
# export CUDA_VISIBLE_DEVICES=0,1,2,3                                 # EDIT: to use only some GPUs

exec python -m sevlm_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${DATA[@]}" \
    --config.train.batch_size="$BATCH" --config.parallel.param_sharding="$PARAMS" "$@"
