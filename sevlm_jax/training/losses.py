"""Pure loss functions of arrays and masks, usable outside this model.

Nothing here knows about the model: every function takes plain arrays, so the
losses can be reused in other JAX code. Conventions shared by all of them:

* Shapes are spelled in the names: B batch, L sequence, V vocabulary, K
  negatives.
* Masks are boolean or 0/1 (float masks act as weights). The (finite) value
  of a masked-out entry never changes the loss or the gradients of the
  others.
* All arithmetic is float32, whatever the input dtype (bf16 logits are fine).
* A loss over nothing (everything masked) is 0 with zero, finite gradients,
  never NaN.
* 'mean' divides by the number (total weight) of counted entries in the whole
  batch, not per example, so long sequences weigh more than short ones, as in
  a token-level cross-entropy.
"""

from collections.abc import Callable, Mapping
from typing import Union

import jax
import jax.numpy as jnp

from sevlm_jax.models.layers import masked_mean  # re-exported: the contrastive head pools with it

__all__ = ["shift_for_next_token", "num_targets", "token_nll", "lm_loss", "masked_mean",
           "vad_loss_mask", "vad_loss", "contrastive_loss", "total_loss", "LossTerm"]

Array = jax.Array


def _safe_divide(total: Array, count: Array) -> Array:
  """total / count, and 0 where count is 0 (no NaN, finite gradients)."""
  return total / jnp.where(count > 0, count, 1.0)


def _masked(mask: Array, values: Array) -> Array:
  """values where mask is set, else 0."""
  return jnp.where(mask.astype(bool), values, 0.0)


def shift_for_next_token(predictions: Array, targets: Array) -> tuple[Array, Array]:
  """Aligns position t's prediction with the target at t+1 (time is axis 1).

  Returns (predictions[:, :-1], targets[:, 1:]). Works for logits BxLxV with
  labels BxL and for VAD predictions BxLx3 with targets BxLx3 alike.
  """
  return predictions[:, :-1], targets[:, 1:]


def num_targets(labels_BxL: Array) -> Array:
  """Number of counted (non-negative) labels, as float32: the denominator of lm_loss's mean."""
  return jnp.sum(labels_BxL >= 0).astype(jnp.float32)


def token_nll(logits_BxLxV: Array, labels_BxL: Array) -> Array:
  """Per-token negative log-likelihood BxL (float32), 0 where the label is negative.

  Computed as logsumexp(logits) - logits[label] in float32, which is stable
  for bf16 logits and never materialises a second BxLxV array of log-probs.
  Labels must be < V; negative labels mark ignored positions.
  """
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  valid_BxL = labels_BxL >= 0
  safe_labels_BxL = jnp.where(valid_BxL, labels_BxL, 0).astype(jnp.int32)
  # The label's logit as a masked sum, not a gather: the sum of one value and zeros is exact,
  # and its gradient is an elementwise select that XLA fuses into the softmax's gradient (a
  # gather's gradient is a scatter into a dense f32 BxLxV tensor, read and written again).
  is_label_BxLxV = jnp.arange(logits_BxLxV.shape[-1]) == safe_labels_BxL[..., None]
  picked_BxL = jnp.sum(jnp.where(is_label_BxLxV, logits_BxLxV, 0.0), axis=-1)
  nll_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1) - picked_BxL
  return _masked(valid_BxL, nll_BxL)


def lm_loss(logits_BxLxV: Array, labels_BxL: Array, *, reduction: str = "mean") -> Array:
  """Next-token cross-entropy.

  The caller passes aligned arrays: logits at position t are scored against
  labels at t (use shift_for_next_token on model outputs first). Any negative
  label (e.g. -1) is ignored.

  reduction:
    'mean': scalar, sum over counted tokens / their number in the whole batch
            (0 when nothing is counted).
    'sum':  scalar sum; divide by num_targets(labels) yourself, e.g. to combine
            micro-batches or devices exactly.
    'none': BxL per-token losses, 0 at ignored positions.
  """
  nll_BxL = token_nll(logits_BxLxV, labels_BxL)
  if reduction == "none":
    return nll_BxL
  if reduction == "sum":
    return jnp.sum(nll_BxL)
  if reduction == "mean":
    return _safe_divide(jnp.sum(nll_BxL), num_targets(labels_BxL))
  raise ValueError(f"lm_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def vad_loss_mask(target_BxLx3: Array, explanation_mask_BxL: Array) -> Array:
  """Positions that count in the VAD loss: explanation positions whose target is not [0, 0, 0].

  A zero target means "word not in the lexicon", not a
  neutral word, so it is left out. Pass arrays already aligned: target[t] is
  the VAD vector of token t+1, and explanation_mask[t] says whether token
  t+1 belongs to the explanation. Returns a boolean BxL mask.
  """
  has_target_BxL = jnp.any(target_BxLx3 != 0, axis=-1)
  return explanation_mask_BxL.astype(bool) & has_target_BxL


def vad_loss(pred_BxLx3: Array, target_BxLx3: Array, mask_BxL: Array) -> Array:
  """Mean squared error of VAD predictions over the masked positions.

  Per position, the squared error is averaged over the 3 components
  (valence, arousal, dominance); the loss is the mean of that over counted
  positions of the whole batch (a float mask weighs positions). 0 when
  nothing is counted. In NumPy: ((p - t)**2).mean(-1)[mask].mean().
  """
  sq_err_BxL = jnp.mean(jnp.square(pred_BxLx3.astype(jnp.float32) - target_BxLx3.astype(jnp.float32)), axis=-1)
  weights_BxL = mask_BxL.astype(jnp.float32)
  total = jnp.sum(_masked(mask_BxL, sq_err_BxL * weights_BxL))
  return _safe_divide(total, jnp.sum(weights_BxL))


def contrastive_loss(pos_scores_B: Array, neg_scores_BxK: Array, *, mask_B: Array | None = None,
                     neg_mask_BxK: Array | None = None, eps: float = 0.0) -> Array:
  """InfoNCE with one positive and K negatives per example, averaged over the batch.

  loss_b = -log(e^s+ / (e^s+ + sum_k e^s_k)) = logsumexp([s+, s_1..s_K]) - s+,
  computed with logsumexp in float32. SEVLM uses K=2: the pair partner's
  explanation and another image's explanation.

  eps > 0 gives the public code's form instead,
  loss_b = -log(eps + e^s+ / (eps + e^s+ + sum_k e^s_k)) (eps 1e-8 there): it
  saturates at -log(eps) (18.42 for 1e-8) with no gradient once s+ is far
  below the negatives. Computed in log space, so it equals the public form
  wherever that is finite, and stays finite where its float32 exponentials
  overflow (scores above ~88, NaN there).

  mask_B drops whole examples (mean over the rest; 0 if none); neg_mask_BxK
  drops single negatives (a row without negatives has loss 0, or
  -log(eps + 1/(1 + eps)) with eps).
  """
  if eps < 0:
    raise ValueError(f"contrastive_loss: eps must be >= 0, got {eps}")
  pos_B = pos_scores_B.astype(jnp.float32)
  neg_BxK = neg_scores_BxK.astype(jnp.float32)
  if neg_mask_BxK is not None:
    neg_BxK = jnp.where(neg_mask_BxK.astype(bool), neg_BxK, -jnp.inf)
  scores_BxK1 = jnp.concatenate([pos_B[:, None], neg_BxK], axis=-1)
  if eps:
    log_eps_Bx1 = jnp.full_like(pos_B[:, None], jnp.log(jnp.float32(eps)))
    log_ratio_B = pos_B - jax.nn.logsumexp(jnp.concatenate([log_eps_Bx1, scores_BxK1], -1), -1)
    loss_B = -jnp.logaddexp(log_eps_Bx1[:, 0], log_ratio_B)
  else:
    loss_B = jax.nn.logsumexp(scores_BxK1, axis=-1) - pos_B
  if mask_B is None:
    return jnp.mean(loss_B)
  weights_B = mask_B.astype(jnp.float32)
  return _safe_divide(jnp.sum(_masked(mask_B, loss_B * weights_B)), jnp.sum(weights_B))


LossTerm = Union[Array, Callable[[], Array]]


def total_loss(terms: Mapping[str, LossTerm], weights: Mapping[str, float]) -> tuple[Array, dict[str, Array]]:
  """Weighted sum of loss terms; returns (total, {name: unweighted value of each computed term}).

  A term is a scalar or a zero-argument function returning one. A term whose
  weight is a Python 0 is skipped and, if it is a function, never called, so
  a disabled loss costs nothing under jit. Every term needs a weight (a
  missing one is an error rather than a silent 0).
  """
  missing = sorted(set(terms) - set(weights))
  if missing:
    raise KeyError(f"total_loss: no weight for loss term(s) {missing}; weights given: {sorted(weights)}")
  total = jnp.zeros((), jnp.float32)
  values = {}
  for name, term in terms.items():
    weight = weights[name]
    if isinstance(weight, (int, float)) and weight == 0:
      continue
    value = term() if callable(term) else term
    values[name] = value
    total = total + weight * value
  return total, values
