"""The optimiser: AdamW with per-part learning rates, linear decay, and a frozen vision tower.

Parameters are grouped by their top-level collection name in the SEVLM params tree
('vision', 'decoder', 'vad_encoder', 'vad_fusion', 'vad_head', 'contrastive_head').
A frozen vision tower is not given to the optimiser at all: the train step takes
gradients only of the trainable part, so the tower's gradients are never computed.
"""

from typing import Any

import ml_collections
import optax

Params = Any


def split_params(params: Params, train_vision: bool) -> tuple[Params, Params]:
  """(trainable, frozen) halves of the top-level params dict."""
  frozen_names = () if train_vision else ("vision",)
  trainable = {k: v for k, v in params.items() if k not in frozen_names}
  frozen = {k: v for k, v in params.items() if k in frozen_names}
  return trainable, frozen


def merge_params(trainable: Params, frozen: Params) -> Params:
  return {**frozen, **trainable}


def learning_rate_schedule(peak_lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up (none in the public recipe) then linear decay to 0 at total_steps."""
  decay = optax.linear_schedule(peak_lr, 0.0, max(total_steps - warmup_steps, 1))
  if warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak_lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def _group_of(name: str) -> str:
  if name == "vision":
    return "vision"
  if name == "vad_encoder":
    return "vad_encoder"
  return "decoder"


def create_optimizer(optim: ml_collections.ConfigDict, trainable: Params, total_steps: int
                     ) -> optax.GradientTransformation:
  """AdamW for the trainable params, one learning-rate schedule per group."""
  peak = {"decoder": optim.lr, "vad_encoder": optim.vad_encoder_lr, "vision": optim.vision_lr}

  def adamw(lr):
    return optax.adamw(learning_rate_schedule(lr, total_steps, optim.warmup_steps),
                       weight_decay=optim.weight_decay)

  labels = {k: _group_of(k) for k in trainable}
  groups = sorted(set(labels.values()))
  tx = optax.multi_transform({g: adamw(peak[g]) for g in groups},
                             lambda tree: {k: labels[k] for k in tree})
  if optim.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  return tx
