#!/usr/bin/env bash
# Train and evaluate SEVLM on one GPU. Run from the repository root: bash launch/one_gpu.sh
# Change the EDIT lines; anything after the script's name is passed on (--config.x=y overrides).
set -euo pipefail

CONFIG=configs/sevlm.py:artemis_v1                                    # EDIT: config and variants
WORKDIR=runs/artemis_v1                                               # EDIT: checkpoints and results
DATA=(--config.data.csv=/data/artemis/artemis_dataset_release_v0.csv  # EDIT: your data
      --config.data.images=/data/wikiart
      --config.data.lexicon=/data/NRC-VAD-Lexicon.txt)
export CUDA_VISIBLE_DEVICES=0                                         # EDIT: which GPU

exec python -m sevlm_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${DATA[@]}" "$@"
