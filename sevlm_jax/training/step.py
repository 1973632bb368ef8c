"""The train state and the pure, jittable SEVLM train step.

One step: encode each image once, run the decoder over both sequences of every
pair (the annotation and its partner with a different emotion), and combine the
language-modelling, VAD and contrastive losses with the configured weights.
"""

import collections
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sevlm_jax import errors
from sevlm_jax.errors import ConfigError
from sevlm_jax.models.segments import config_part_masks
from sevlm_jax.training import losses
from sevlm_jax.training import optim as optim_lib

Params = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Params  # the whole model; only the trainable part is in opt_state
  opt_state: optax.OptState
  skipped_steps: jax.Array  # steps whose loss or gradients were not finite


def init_train_state(params: Params, tx: optax.GradientTransformation, train_vision: bool
                     ) -> TrainState:
  trainable, _ = optim_lib.split_params(params, train_vision)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable),
                    skipped_steps=jnp.zeros((), jnp.int32))


def flatten_pairs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """[B, 2, L] pair fields -> [2B, L]; rows 2i and 2i+1 are the two sequences of image i."""
  out = {}
  for key in ("input_ids", "segment_ids", "token_mask", "labels"):
    x = batch[key]
    out[key] = x.reshape((-1,) + x.shape[2:])
  return out


NEGATIVES = ("random", "public")


def check_config(config: ml_collections.ConfigDict) -> None:
  """The train and loss sections' choices the step owns."""
  if config.train.batch_size < 2 and config.loss.contrastive_weight:
    raise ConfigError("train.batch_size must be >= 2 with the contrastive loss (it needs another image)")
  errors.check_choice("train.negatives", config.train.negatives, NEGATIVES)
  eps = config.loss.contrastive_eps
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
    raise ConfigError(f"loss.contrastive_eps={eps!r}; use 0 (exact InfoNCE) or a small positive"
                      " number (1e-8 in the public code)")


def other_image_rows(rng: jax.Array, num_images: int, negatives: str = "random",
                     num_valid: jax.Array | None = None) -> jax.Array:
  """For each of the 2B sequences, a row of the same pair slot from a different image.

  'random': every image takes image (i + s) mod B, one random shift s in 1..B-1 per batch.
  'public': the public code's draw (`neg_ids`), one per pair slot, see public_negative_images.
  num_valid (a traced count): only the first num_valid images are real (a padded last batch);
  they draw among themselves as a batch of num_valid images would, and padding rows keep their own.
  """
  if num_valid is not None:
    return _other_real_image_rows(rng, num_images, negatives, num_valid)
  if negatives == "public":
    slot_keys = jax.random.split(rng)
    images_2xB = jnp.stack([public_negative_images(k, num_images) for k in slot_keys])
    return (2 * images_2xB + jnp.arange(2)[:, None]).T.reshape(-1)  # rows 2i, 2i+1
  if negatives != "random":
    raise ValueError(f"train.negatives={negatives!r}; choose one of {', '.join(NEGATIVES)}")
  shift = jax.random.randint(rng, (), 1, max(num_images, 2))
  rows = jnp.arange(2 * num_images)
  return (rows + 2 * shift) % (2 * num_images)


def _other_real_image_rows(rng, num_images: int, negatives: str, num_valid) -> jax.Array:
  """other_image_rows when only the first num_valid of num_images images are real."""
  rows = jnp.arange(2 * num_images)
  if negatives == "public":
    slot_keys = jax.random.split(rng)
    images_2xB = jnp.stack([public_negative_images_of_prefix(k, num_images, num_valid)
                            for k in slot_keys])
    return (2 * images_2xB + jnp.arange(2)[:, None]).T.reshape(-1)
  if negatives != "random":
    raise ValueError(f"train.negatives={negatives!r}; choose one of {', '.join(NEGATIVES)}")
  # randint with a traced bound draws what the static bound of a num_valid batch draws.
  shift = jax.random.randint(rng, (), 1, jnp.maximum(num_valid, 2))
  real = rows < 2 * num_valid
  return jnp.where(real, (rows + 2 * shift) % jnp.maximum(2 * num_valid, 1), rows)


def public_negative_images_of_prefix(rng: jax.Array, num_images: int, num_valid) -> jax.Array:
  """public_negative_images of a batch whose first num_valid (traced) of num_images images are
  real: the same rule with B = num_valid (each permutation drawn by sorting uniform keys, as
  its size is not static); padding images take themselves."""
  n, index = num_valid, jnp.arange(num_images)
  mid = n // 2
  upper_key, lower_key = jax.random.split(rng)

  def shuffled(key, member):  # the members of the set in random order, first
    keys = jnp.where(member, jax.random.uniform(key, (num_images,)), 2.0)
    return jnp.argsort(keys)

  upper = shuffled(upper_key, (index > mid) & (index < n))
  lower = shuffled(lower_key, index < mid)
  take = lambda order, k: order[jnp.clip(k, 0, num_images - 1)]
  out = jnp.where(index < n - mid, take(upper, index - 1), take(lower, index - (n - mid)))
  out = jnp.where(index == 0, mid, out)
  return jnp.where(index < n, out, index).astype(jnp.int32)


def public_negative_images(rng: jax.Array, num_images: int) -> jax.Array:
  """The public code's other image for each of B images: with m = B // 2, image 0 takes m,
  images 1..B-m-1 a random permutation of m+1..B-1 and images B-m..B-1 one of 0..m-1 (for
  B = 32: image 0 always gets 16, images 1-15 draw only from the upper half). Never the image
  itself for B >= 2."""
  mid = num_images // 2
  upper_key, lower_key = jax.random.split(rng)
  upper = mid + 1 + jax.random.permutation(upper_key, num_images - mid - 1)
  lower = jax.random.permutation(lower_key, mid)
  return jnp.concatenate([jnp.asarray([mid]), upper, lower]).astype(jnp.int32)


def restricted_labels(labels: jax.Array, output_ids: jax.Array, vocab_size: int) -> jax.Array:
  """Token-id labels -> positions in output_ids (-1 stays -1, and so does a token not in it)."""
  position_of = jnp.full((vocab_size,), -1, jnp.int32).at[output_ids].set(
      jnp.arange(output_ids.shape[0], dtype=jnp.int32))
  return jnp.where(labels >= 0, position_of[jnp.maximum(labels, 0)], -1)


def sevlm_loss(model, params: Params, batch: dict[str, jax.Array], vad_table: jax.Array,
               loss_cfg: ml_collections.ConfigDict, rng: jax.Array, *, patches=None,
               deterministic: bool = False, output_ids: jax.Array | None = None,
               pad_vocab_to: int = 128, pair_kv_once: bool = True, negatives: str = "random"
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted SEVLM loss of one batch of pairs and its parts.

  output_ids: a restricted output vocabulary (token ids); the LM softmax is then over them.
  pad_vocab_to: the LM head's columns are padded to a multiple of this (never chosen), so that
  its GEMMs run on aligned kernels; 1 = no padding. pair_kv_once: both sequences of a pair read
  their image's cross-attention K/V, projected once; False repeats the patches per sequence.
  Both are exact rewrites (config.train fields; the benchmark's baseline switches them off).
  negatives: how the other-image negatives are drawn (other_image_rows). loss_cfg.contrastive_eps
  (absent = 0) selects the contrastive loss's form (losses.contrastive_loss's eps).
  batch['valid'] (bool B, optional): False marks the padding images of a partial last batch
  (pipeline.train_loader without drop_remainder; the real ones come first); every loss is then
  the loss of the real images alone, and padding contributes nothing.
  """
  dropout_rng, negative_rng = jax.random.split(rng)
  if patches is None:
    patches = model.apply({"params": params}, batch["image"], method=model.encode_image)
  num_images = patches.shape[0]
  if not pair_kv_once:
    patches = jnp.repeat(patches, 2, axis=0)
  seq = flatten_pairs(batch)
  valid_B = batch.get("valid")
  real_N = None if valid_B is None else jnp.repeat(valid_B.astype(bool), 2)  # rows 2i, 2i+1
  token_vad_NxLx3 = vad_table[seq["input_ids"]]
  # Rows 2i and 2i+1 read image i: each image is encoded, and its cross-attention K/V
  # projected, once per pair. Logits stay in the compute dtype (bf16: half the bytes);
  # the LM loss upcasts inside its reductions. The vocabulary is padded to a multiple of
  # 128 columns (never chosen) so that the LM-head GEMMs run on aligned kernels.
  out = model.apply({"params": params}, patches, seq["input_ids"], seq["segment_ids"],
                    token_vad_NxLx3, seq["token_mask"], deterministic=deterministic,
                    output_ids=output_ids, logits_dtype=model.config.compute_dtype,
                    pad_vocab_to=pad_vocab_to, rngs={"dropout": dropout_rng})
  metrics = {}

  def lm():
    labels = seq["labels"]
    if output_ids is not None:
      labels = restricted_labels(labels, output_ids, vad_table.shape[0])
    if real_N is not None:  # padding rows have no targets
      labels = jnp.where(real_N[:, None], labels, -1)
    return losses.lm_loss(*losses.shift_for_next_token(out["logits"], labels))

  def vad():
    # The public code's own VAD loss does not mask padding: the <pad> row of the VAD table is
    # [0, 0, 0], so padding is never a target either way.
    _, explanation = config_part_masks(seq["segment_ids"], model.config)
    target_is_explanation = explanation[:, 1:] & (seq["token_mask"][:, 1:] > 0)
    if real_N is not None:
      target_is_explanation &= real_N[:, None]
    target_vad = token_vad_NxLx3[:, 1:]
    mask = losses.vad_loss_mask(target_vad, target_is_explanation)
    return losses.vad_loss(out["vad_pred"][:, :-1], target_vad, mask)

  def contrastive():
    partner = jnp.arange(2 * num_images) ^ 1  # 2i <-> 2i+1
    num_valid = None if valid_B is None else jnp.sum(valid_B.astype(jnp.int32))
    other = other_image_rows(negative_rng, num_images, negatives, num_valid)
    img, emo, expl = out["image_feat"], out["emotion_feat"], out["explanation_feat"]
    # The three triples of each row scored in one pass of the head (a third of its launches).
    n = expl.shape[0]
    tile = lambda x: jnp.concatenate([x, x, x])
    scores = model.apply({"params": params}, tile(img), tile(emo),
                         jnp.concatenate([expl, expl[partner], expl[other]]), method=model.score)
    pos, neg = scores[:n], jnp.stack([scores[n:2 * n], scores[2 * n:]], axis=-1)
    hit_N = pos > jnp.max(neg, axis=-1)
    metrics["contrastive_acc"] = (jnp.mean(hit_N) if real_N is None else
                                  jnp.sum(hit_N & real_N) / jnp.maximum(jnp.sum(real_N), 1))
    return losses.contrastive_loss(pos, neg, mask_B=real_N,
                                   eps=float(loss_cfg.contrastive_eps))

  # A term whose weight is 0 is never computed.
  total, terms = losses.total_loss(
      {"lm": lm, "vad": vad, "contrastive": contrastive},
      {"lm": loss_cfg.lm_weight, "vad": loss_cfg.vad_weight,
       "contrastive": loss_cfg.contrastive_weight})
  metrics.update({f"loss_{k}": v for k, v in terms.items()})
  metrics["loss"] = total
  return total, metrics


def _sum_of_squares_by_row(leaves: list[jax.Array]) -> list[jax.Array]:
  """Each leaf's squares (float32) summed along its last axis, for leaves of one shape in one
  variadic reduction: one kernel for the whole group instead of one per leaf."""
  squares = [jnp.square(x.astype(jnp.float32)) for x in leaves]
  if squares[0].ndim == 0:
    return squares
  add = lambda acc, x: [a + b for a, b in zip(acc, x)]
  return jax.lax.reduce(squares, [jnp.float32(0)] * len(squares), add, (squares[0].ndim - 1,))


def global_norm(tree) -> jax.Array:
  """optax.global_norm in a few kernels instead of one or two per leaf.

  Leaves of one shape are squared and summed along their last axis by one variadic
  reduction (the decoder's six layers share their shapes), not one reduction per matrix;
  those row sums are concatenated (a few MB) and summed once.
  The optimization barrier keeps XLA from turning the sum of the concatenation back into
  one reduction per piece.
  """
  groups = {}
  for x in jax.tree.leaves(tree):
    groups.setdefault((x.shape, jnp.dtype(x.dtype)), []).append(x)
  pieces = [s.ravel() for leaves in groups.values() for s in _sum_of_squares_by_row(leaves)]
  return jnp.sqrt(jnp.sum(jax.lax.optimization_barrier(jnp.concatenate(pieces))))


def guard(ok: jax.Array, like) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(new, old) -> new where ok else old, for the leaves of a step's update.

  Leaves whose shape several parameters share (the decoder's layers) select with one mask
  array of that shape instead of the scalar: XLA fuses computations that read the same
  array, so the Adam updates of all leaves of one shape (parameter and both moments) become
  one kernel (the step's select kernels: 189 -> 41 on an H200). The optimization barrier
  keeps the mask a real array rather than a broadcast XLA would fold into each kernel.
  """
  counts = collections.Counter(x.shape for x in jax.tree.leaves(like))
  masks = {shape: jax.lax.optimization_barrier(jnp.broadcast_to(ok, shape))
           for shape, n in counts.items() if n > 1 and shape}

  def keep(new, old):
    return jnp.where(masks.get(new.shape, ok), new, old)

  return keep


def make_train_step(model, config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                    output_ids=None) -> Callable:
  """Returns train_step(state, batch, vad_table, rng) -> (state, metrics), pure and jittable.

  batch: 'image' Bx..., or 'patches' BxPxD (the frozen tower's cached output, any float
  dtype), and the pair fields Bx2xL 'input_ids', 'segment_ids', 'token_mask', 'labels'.

  output_ids: the restricted output vocabulary of the run (None: the full vocabulary).
  """
  check_config(config)  # the step's own choices, whoever builds it
  if output_ids is not None:
    output_ids = jnp.asarray(output_ids, jnp.int32)
  train_vision = config.optim.train_vision
  pad_vocab_to = int(config.train.pad_vocab_to)
  pair_kv_once = bool(config.train.pair_kv_once)
  negatives = str(config.train.negatives)

  def train_step(state: TrainState, batch, vad_table, rng):
    trainable, frozen = optim_lib.split_params(state.params, train_vision)
    patches = None
    if "patches" in batch:  # the frozen tower's cached output (sevlm_jax.data.features)
      if train_vision:
        raise ValueError("cached patch features need a frozen vision tower "
                         "(optim.train_vision=False)")
      patches = jax.lax.stop_gradient(batch["patches"])
    elif not train_vision:  # frozen tower: run forward only, outside the differentiated function
      patches = jax.lax.stop_gradient(model.apply({"params": frozen}, batch["image"],
                                                  method=model.encode_image))

    def loss_fn(p):
      return sevlm_loss(model, optim_lib.merge_params(p, frozen), batch, vad_table, config.loss,
                        rng, patches=patches, output_ids=output_ids,
                        pad_vocab_to=pad_vocab_to, pair_kv_once=pair_kv_once,
                        negatives=negatives)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    # NaN/inf guard: a non-finite loss or gradient leaves the state untouched. The update is
    # computed either way and each leaf selected inside the Adam kernels (guard); a lax.cond instead
    # made XLA copy every parameter and both Adam moments (1.2 GB, 554 copies per step on an
    # H200) into and out of the conditional.
    grad_norm = global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    keep = guard(ok, trainable)
    new_trainable = jax.tree.map(keep, new_trainable, trainable)
    new_opt_state = jax.tree.map(keep, new_opt_state, state.opt_state)
    new_state = state.replace(
        step=state.step + 1,
        params=optim_lib.merge_params(new_trainable, frozen),
        opt_state=new_opt_state,
        skipped_steps=state.skipped_steps + (~ok).astype(jnp.int32))
    metrics = dict(metrics, grad_norm=grad_norm, finite=ok.astype(jnp.float32))
    return new_state, metrics

  return train_step
