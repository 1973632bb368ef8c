#!/usr/bin/env bash
# Train and evaluate SEVLM on a Cloud TPU VM slice (one host or several): run this from your own
# machine; it starts the same command on every TPU host, one process per host.
# Each host needs the repository at REPO with pip install -e . 'jax[tpu]' done in .venv.
# Change the EDIT lines.
set -euo pipefail

TPU=my-tpu-v4-32                  # EDIT: the TPU VM's name
ZONE=us-central2-b                # EDIT
PROJECT=my-project                # EDIT
REPO='~/sevlm_jax'                # EDIT: the repository on every host
CONFIG=configs/sevlm.py:artemis_v1                                    # EDIT: config and variants
WORKDIR=/mnt/shared/runs/artemis_v1  # EDIT: a directory every host sees (Filestore/NFS, gcsfuse)
DATA="--config.data.ready_dir=/mnt/shared/artemis_ready --config.data.lexicon=/mnt/shared/NRC-VAD-Lexicon.txt"  # EDIT
BATCH=128                         # EDIT: the global batch; a multiple of the TPU chip count

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --project="$PROJECT" --worker=all --command="
  cd $REPO && .venv/bin/python -m sevlm_jax.main --config=$CONFIG --workdir=$WORKDIR $DATA \
      --config.train.batch_size=$BATCH --config.parallel.distributed=on $*"
