#!/usr/bin/env bash
# Train and evaluate SEVLM on a Cloud TPU VM slice (one host or several): run this from your own
# machine; it starts the same command on every TPU host, one process per host.
# Each host needs the repository at REPO with pip install -e '.[gcs]' 'jax[tpu]' done in .venv
# ([gcs]: gcsfs, for the gs:// paths below; the TPU VM's service account gives the credentials).
# Change the EDIT lines.
set -euo pipefail

TPU=my-tpu-v4-32                  # EDIT: the TPU VM's name
ZONE=us-central2-b                # EDIT
PROJECT=my-project                # EDIT
REPO='~/sevlm_jax'                # EDIT: the repository on every host
CONFIG=configs/sevlm.py:artemis_v1                                    # EDIT: config and variants
# EDIT: where every host sees the run and the data: a bucket (gs://, read and written directly,
# no gcsfuse) or a shared file system (/mnt/shared/..., Filestore/NFS). The prepared data set's
# records are copied to each host's local disk on first use (array_record reads local files).
WORKDIR=gs://my-bucket/runs/artemis_v1
DATA="--config.data.ready_dir=gs://my-bucket/artemis_ready --config.data.lexicon=gs://my-bucket/NRC-VAD-Lexicon.txt"
BATCH=128                         # EDIT: the global batch; a multiple of the TPU chip count

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --project="$PROJECT" --worker=all --command="
  cd $REPO && .venv/bin/python -m sevlm_jax.main --config=$CONFIG --workdir=$WORKDIR $DATA \
      --config.train.batch_size=$BATCH --config.parallel.distributed=on $*"
