"""The optimiser: AdamW with per-part learning rates, linear decay, and a frozen vision tower.

Parameters are grouped by their top-level collection name in the SEVLM params tree
('vision', 'decoder', 'vad_encoder', 'vad_fusion', 'vad_head', 'contrastive_head').
A frozen vision tower is not given to the optimiser at all: the train step takes
gradients only of the trainable part, so the tower's gradients are never computed.

Two forms of AdamW (optim.adam_form):
  optax         optax.adamw: m_hat / (sqrt(v_hat) + eps), then lr * weight_decay * p, both on
                the weights before the step (Kingma & Ba's Algorithm 1; torch.optim.AdamW too).
  transformers  the AdamW of transformers 4.x that the public code imports (correct_bias=True):
                eps is added to sqrt(v) before the bias correction, so it acts as
                eps / sqrt(1 - b2^t) on the corrected moments (31.6 x eps at step 1), and the
                decay lr * weight_decay * p is applied to the weights after the Adam step.
With weight_decay 0 (the recipe) the forms differ only in where eps sits.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sevlm_jax import errors

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


ADAM_FORMS = ("optax", "transformers")


class TransformersAdamState(NamedTuple):
  count: jax.Array  # steps taken
  mu: Params
  nu: Params


def transformers_adamw(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
                       eps: float = 1e-6, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """transformers' (4.x) AdamW with correct_bias=True, as an optax transformation (see above)."""

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return TransformersAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

  def update(grads, state, params=None):
    if weight_decay and params is None:
      raise ValueError("transformers_adamw with weight_decay needs the params")
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
    count = optax.safe_increment(state.count)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    t = count.astype(jnp.float32)
    step_size = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)

    def one(m, v, p):
      step = step_size * m / (jnp.sqrt(v) + eps)
      if not weight_decay:
        return -step
      return -step - lr * weight_decay * (p - step)  # decay of the already updated weights

    updates = jax.tree.map(one, mu, nu, grads if params is None else params)
    return updates, TransformersAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def _group_of(name: str) -> str:
  if name == "vision":
    return "vision"
  if name == "vad_encoder":
    return "vad_encoder"
  return "decoder"


def check_config(optim: ml_collections.ConfigDict) -> None:
  """The optim section's choices."""
  errors.check_choice("optim.adam_form", optim.adam_form, ADAM_FORMS)


def create_optimizer(optim: ml_collections.ConfigDict, trainable: Params, total_steps: int
                     ) -> optax.GradientTransformation:
  """AdamW for the trainable params, one learning-rate schedule per group."""
  peak = {"decoder": optim.lr, "vad_encoder": optim.vad_encoder_lr, "vision": optim.vision_lr}

  eps, form = optim.adam_eps, optim.adam_form
  check_config(optim)

  def adamw(lr):
    schedule = learning_rate_schedule(lr, total_steps, optim.warmup_steps)
    if form == "transformers":
      return transformers_adamw(schedule, eps=eps, weight_decay=optim.weight_decay)
    return optax.adamw(schedule, eps=eps, weight_decay=optim.weight_decay)

  labels = {k: _group_of(k) for k in trainable}
  groups = sorted(set(labels.values()))
  tx = optax.multi_transform({g: adamw(peak[g]) for g in groups},
                             lambda tree: {k: labels[k] for k in tree})
  if optim.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  return tx
