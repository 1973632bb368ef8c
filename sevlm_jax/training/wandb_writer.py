"""The Weights & Biases metric writer (train.writers=...,wandb; pip install 'sevlm_jax[wandb]').

One W&B run per workdir: its id is kept in <workdir>/wandb_run_id, so a resumed training and a
later --mode=evaluate add to the same run. WANDB_MODE=offline keeps it on disk (in
<workdir>/wandb/, for `wandb sync`); WANDB_PROJECT names the project (default sevlm_jax).
"""

import os
import secrets

from etils import epath

from sevlm_jax import errors

RUN_ID_FILE = "wandb_run_id"
# x-axis of every chart: the training step logged with each row. W&B's own step must only grow,
# and evaluation logs its checkpoint's step (below the last training step), a resumed run steps
# already logged.
STEP_KEY = "step"


def _run_id(workdir: epath.Path) -> str:
  """The workdir's W&B run id (8 letters and digits, as W&B makes them), made at the first use."""
  path = workdir / RUN_ID_FILE
  if path.exists():
    return path.read_text().strip()
  run_id = secrets.token_hex(4)
  path.write_text(run_id)
  return run_id


class WandbWriter:
  """Scalars as split/name against STEP_KEY, the config as the run's config, images as
  wandb.Image."""

  def __init__(self, workdir):
    self._wandb = errors.optional_import("wandb", "train.writers=wandb (Weights & Biases)",
                                         extra="wandb")
    workdir = epath.Path(workdir)
    local = "://" not in os.fspath(workdir)  # W&B keeps its files on a local disk
    self._run = self._wandb.init(
        project=os.environ.get("WANDB_PROJECT", "sevlm_jax"), name=workdir.name,
        id=_run_id(workdir), resume="allow", dir=os.fspath(workdir) if local else None)
    self._run.define_metric(STEP_KEY)
    self._run.define_metric("*", step_metric=STEP_KEY)

  def write_scalars(self, step, split, scalars):
    self._run.log({STEP_KEY: int(step), **{f"{split}/{k}": v for k, v in scalars.items()}})

  def write_hparams(self, hparams):
    self._run.config.update(hparams, allow_val_change=True)

  def write_image(self, step, name, image_HxWx3):
    self._run.log({STEP_KEY: int(step), name: self._wandb.Image(image_HxWx3)})

  def close(self):
    self._run.finish()
