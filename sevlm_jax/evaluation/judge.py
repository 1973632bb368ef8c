"""The EA judge: trains, applies, saves and loads the text-to-emotion classifier.

EA (emotional alignment, README.md "Metrics") asks a text classifier which
emotion a generated explanation expresses. ArtEmis's own classifier is a
pickled PyTorch module, so the project trains its own on the training
utterances and reports its held-out accuracy beside every EA figure.

    judge = train_judge(texts, labels, heldout_texts, heldout_labels, tokenizer.encode, config)
    judge.save(workdir / "judge")                      # an Orbax checkpoint
    judge = Judge.load(workdir / "judge", encode_fn=tokenizer.encode)
    emotion_ids = judge.predict(explanations)          # int32[N], indices into EMOTIONS
"""

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from sevlm_jax import checkpoints
from sevlm_jax import io_utils
from sevlm_jax.data import batching
from sevlm_jax.models import emotion_classifier
from sevlm_jax.vocab import EMOTIONS, NUM_EMOTIONS

EncodeFn = Callable[[str], Sequence[int]]

FORMAT_VERSION = 2  # 1 was judge.json + params.msgpack; 2 is an Orbax checkpoint
ITEMS = ("meta", "params")  # the checkpoint's items: config, held-out accuracy, info; the weights
REQUIRED_KEYS = ("vocab_size", "embed_dim", "hidden_dim", "mlp_dim", "dropout", "max_len", "batch_size",
                 "eval_batch_size", "learning_rate", "weight_decay", "grad_clip_norm", "num_epochs", "seed")
MODEL_KEYS = ("vocab_size", "embed_dim", "hidden_dim", "mlp_dim", "dropout", "max_len")  # what fixes the network


def _check_config(config) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(config))
  missing = [k for k in REQUIRED_KEYS if k not in config]
  if missing:
    raise ValueError(f"EA judge config lacks {missing}; start from configs/emotion_classifier.py")
  return config


def _model_key(config) -> tuple:
  """Hashable key of the network's shape: compiled functions are cached per key."""
  return tuple(config[k] for k in MODEL_KEYS)


def encode_texts(texts: Sequence[str], encode_fn: EncodeFn, max_len: int, vocab_size: int,
                 what: str = "texts") -> tuple[np.ndarray, np.ndarray]:
  """Token ids int32[N, max_len] (right-padded with 0, truncated) and mask int32[N, max_len]."""
  ids = np.zeros((len(texts), max_len), np.int32)
  mask = np.zeros((len(texts), max_len), np.int32)
  for n, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f"{what}[{n}] is {type(text).__name__}, not str")
    tokens = list(encode_fn(text))[:max_len]
    if tokens and not (0 <= min(tokens) and max(tokens) < vocab_size):
      raise ValueError(f"{what}[{n}] ({text[:60]!r}) encodes to token ids outside 0..{vocab_size - 1}; "
                       "the judge config's vocab_size must cover the tokenizer passed as encode_fn")
    ids[n, :len(tokens)] = tokens
    mask[n, :len(tokens)] = 1
  return ids, mask


def _check_labels(labels: Sequence[int], num_texts: int, what: str) -> np.ndarray:
  labels = np.asarray(labels, np.int64).reshape(-1)
  if labels.shape[0] != num_texts:
    raise ValueError(f"{what}: {num_texts} texts but {labels.shape[0]} labels")
  bad = np.flatnonzero((labels < 0) | (labels >= NUM_EMOTIONS))
  if bad.size:
    raise ValueError(f"{what}: label {labels[bad[0]]} at row {bad[0]} is not an emotion index 0..{NUM_EMOTIONS - 1}")
  return labels.astype(np.int32)


@functools.lru_cache(maxsize=8)
def _predict_fn(model_key: tuple):
  """Jitted logits function, one per model shape, shared by every Judge of that shape."""
  model = emotion_classifier.from_config(ml_collections.ConfigDict(dict(zip(MODEL_KEYS, model_key))))

  @jax.jit
  def predict_logits(params, ids_BxL, mask_BxL):
    return model.apply({"params": params}, ids_BxL, mask_BxL, deterministic=True)
  return predict_logits


def _optimizer(grad_clip_norm: float, weight_decay: float) -> optax.GradientTransformation:
  """AdamW without its learning rate; the train step scales by a learning rate it receives."""
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), optax.scale_by_adam(),
                     optax.add_decayed_weights(weight_decay))


@functools.lru_cache(maxsize=8)
def _train_step_fn(model_key: tuple, grad_clip_norm: float, weight_decay: float):
  """Jitted train_step(params, opt_state, ids, mask, labels, weights, lr, rng) -> (params, opt_state, loss)."""
  model = emotion_classifier.from_config(ml_collections.ConfigDict(dict(zip(MODEL_KEYS, model_key))))
  tx = _optimizer(grad_clip_norm, weight_decay)

  def loss_fn(params, ids_BxL, mask_BxL, labels_B, weights_B, rng):
    logits_BxC = model.apply({"params": params}, ids_BxL, mask_BxL, deterministic=False, rngs={"dropout": rng})
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC.astype(jnp.float32), labels_B)
    return jnp.sum(nll_B * weights_B) / jnp.maximum(jnp.sum(weights_B), 1.0)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, ids_BxL, mask_BxL, labels_B, weights_B, lr, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids_BxL, mask_BxL, labels_B, weights_B, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state, loss
  return train_step


def _batched_logits(predict_logits, params, ids: np.ndarray, mask: np.ndarray, batch_size: int) -> np.ndarray:
  """Logits float32[N, 9], in fixed-size batches (the last one padded) so one compilation serves all."""
  out = np.zeros((ids.shape[0], NUM_EMOTIONS), np.float32)
  for start, stop in batching.batch_bounds(ids.shape[0], batch_size):
    ids_b = batching.pad_rows(ids[start:stop], batch_size)
    mask_b = batching.pad_rows(mask[start:stop], batch_size)
    out[start:stop] = np.asarray(predict_logits(params, ids_b, mask_b))[:stop - start]
  return out


@dataclasses.dataclass
class Judge:
  """A trained EA judge: classifier params, its config, and its accuracy on held-out utterances."""
  params: Any
  config: ml_collections.ConfigDict
  heldout_accuracy: float
  encode_fn: EncodeFn | None = None
  info: dict = dataclasses.field(default_factory=dict)  # e.g. data sizes, train loss per epoch
  _predict_logits: Any = dataclasses.field(default=None, repr=False, compare=False)

  def logits(self, texts: Sequence[str]) -> np.ndarray:
    """Emotion logits float32[N, 9] of each text (columns in EMOTIONS order)."""
    if self.encode_fn is None:
      raise ValueError("Judge has no encode_fn; pass the tokenizer's encode: Judge.load(dir, encode_fn=...)")
    ids, mask = encode_texts(texts, self.encode_fn, self.config.max_len, self.config.vocab_size)
    return self.logits_of_ids(ids, mask)

  def logits_of_ids(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits float32[N, 9] of already encoded texts (int32[N, max_len] ids and mask, as encode_texts)."""
    if self._predict_logits is None:
      self._predict_logits = _predict_fn(_model_key(self.config))
    return _batched_logits(self._predict_logits, self.params, ids, mask, self.config.eval_batch_size)

  def predict(self, texts: Sequence[str]) -> np.ndarray:
    """Most likely emotion index int32[N] of each text."""
    return np.argmax(self.logits(texts), axis=-1).astype(np.int32)

  def save(self, directory: str | os.PathLike) -> None:
    """Writes an Orbax checkpoint (items meta and params), replacing any judge there: Orbax writes
    it to a temporary directory and renames it when complete, so a reader never sees a part."""
    meta = {"format_version": FORMAT_VERSION, "emotions": list(EMOTIONS), "config": self.config.to_dict(),
            "heldout_accuracy": self.heldout_accuracy, "info": self.info}
    directory = (Path(directory).absolute() if io_utils.is_local(directory)
                 else io_utils.as_path(directory))  # gs://...
    with checkpoints.saving(directory, what="the EA judge"):
      _checkpointer().save(directory, args=ocp.args.Composite(
          params=ocp.args.StandardSave(jax.device_get(self.params)), meta=ocp.args.JsonSave(meta)), force=True)

  @classmethod
  def load(cls, directory: str | os.PathLike, encode_fn: EncodeFn | None = None) -> "Judge":
    """Reads a judge written by save(); pass the same encode_fn it was trained with to predict."""
    directory = (Path(directory).absolute() if io_utils.is_local(directory)
                 else io_utils.as_path(directory))  # gs://...
    if not all((directory / item).is_dir() for item in ITEMS):
      raise FileNotFoundError(f"no EA judge in {directory}: expected an Orbax checkpoint with items "
                              f"{' and '.join(ITEMS)} there; train one with "
                              "sevlm_jax.evaluation.judge.train_judge and Judge.save")
    try:
      restored = _checkpointer().restore(directory, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  # Orbax and tensorstore raise many types on bad files
      raise ValueError(f"corrupt EA judge in {directory} ({checkpoints.cause(e)}); delete the directory and "
                       "train the judge again") from e
    meta = restored["meta"]
    try:
      version = meta["format_version"]
      config = _check_config(meta["config"])
      heldout_accuracy = meta["heldout_accuracy"]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"corrupt EA judge meta in {directory} ({type(e).__name__}: {e}); delete the directory "
                       "and train the judge again") from e
    if version != FORMAT_VERSION or meta.get("emotions") != list(EMOTIONS):
      raise ValueError(f"the EA judge in {directory} is format {version} with emotions {meta.get('emotions')}; "
                       f"this code reads format {FORMAT_VERSION} with {list(EMOTIONS)}: train the judge again")
    params = _check_params(restored["params"], config, directory)
    return cls(params=params, config=config, heldout_accuracy=heldout_accuracy, encode_fn=encode_fn,
               info=meta.get("info", {}))


def _checkpointer() -> ocp.Checkpointer:
  """Orbax, for this process alone: one process saves the judge and the others then load it
  (parallel.primary_first), so its saves and restores must not wait for them in a barrier."""
  me = jax.process_index()
  alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  handler = ocp.CompositeCheckpointHandler(
      composite_options=ocp.CompositeOptions(multiprocessing_options=alone),
      params=ocp.StandardCheckpointHandler(multiprocessing_options=alone),
      meta=ocp.JsonCheckpointHandler(multiprocessing_options=alone))
  return ocp.Checkpointer(handler, multiprocessing_options=alone)


def _init_params(config, rng):
  return _init_fn(_model_key(config))(rng)


@functools.lru_cache(maxsize=8)
def _init_fn(model_key: tuple):
  """Jitted rng -> fresh params, one per model shape."""
  config = ml_collections.ConfigDict(dict(zip(MODEL_KEYS, model_key)))
  model = emotion_classifier.from_config(config)
  ids = jnp.zeros((1, config.max_len), jnp.int32)
  return jax.jit(lambda rng: model.init(rng, ids, jnp.ones_like(ids))["params"])


def _check_params(params, config, directory: Path):
  """The restored params as device arrays, once every array has the shape the config says."""
  target = jax.eval_shape(lambda: _init_params(config, jax.random.key(0)))
  saved = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  for key, leaf in jax.tree_util.tree_leaves_with_path(target):
    got = saved.pop(jax.tree_util.keystr(key), None)
    if got != leaf.shape:
      raise ValueError(f"EA judge params in {directory}: {jax.tree_util.keystr(key)} has shape {got}, config says "
                       f"{leaf.shape}; its params and meta do not belong together: train the judge again")
  if saved:
    raise ValueError(f"EA judge params in {directory} hold {sorted(saved)}, which the config's network lacks; "
                     "its params and meta do not belong together: train the judge again")
  return jax.tree.map(jnp.asarray, params)


def train_judge(train_texts: Sequence[str], train_labels: Sequence[int], heldout_texts: Sequence[str],
                heldout_labels: Sequence[int], encode_fn: EncodeFn, config) -> Judge:
  """Trains the classifier for config.num_epochs epochs and measures it once on the held-out texts.

  Labels are emotion indices (EMOTIONS order). Deterministic for a given
  config.seed. The held-out set is used only for the final accuracy, never
  for choosing among models, so the number is an honest estimate.
  """
  config = _check_config(config)
  if not len(train_texts):
    raise ValueError("train_judge: no training texts")
  if not len(heldout_texts):
    raise ValueError("train_judge: no held-out texts; EA is reported beside the judge's held-out accuracy")
  train_y = _check_labels(train_labels, len(train_texts), "train_judge train_labels")
  heldout_y = _check_labels(heldout_labels, len(heldout_texts), "train_judge heldout_labels")
  train_ids, train_mask = encode_texts(train_texts, encode_fn, config.max_len, config.vocab_size, "train_texts")
  heldout_ids, heldout_mask = encode_texts(heldout_texts, encode_fn, config.max_len, config.vocab_size,
                                           "heldout_texts")

  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  params = _init_params(config, init_rng)
  opt_state = _optimizer(config.grad_clip_norm, config.weight_decay).init(params)
  train_step = _train_step_fn(_model_key(config), config.grad_clip_norm, config.weight_decay)
  num_batches = -(-len(train_texts) // config.batch_size)
  schedule = optax.cosine_decay_schedule(config.learning_rate, num_batches * config.num_epochs)

  order_rng = np.random.default_rng(config.seed)
  epoch_losses = []
  bar = io_utils.Progress("EA judge training", total=config.num_epochs * num_batches, unit="batch")
  for epoch in range(config.num_epochs):
    order = order_rng.permutation(len(train_texts))
    # Pad the permutation to whole batches; padded rows get weight 0 (one compiled shape for every step).
    pad = num_batches * config.batch_size - len(order)
    weights = np.concatenate([np.ones(len(order), np.float32), np.zeros(pad, np.float32)])
    order = np.concatenate([order, np.zeros(pad, order.dtype)])
    batch_losses = []
    for b in range(num_batches):
      rows = order[b * config.batch_size:(b + 1) * config.batch_size]
      w = weights[b * config.batch_size:(b + 1) * config.batch_size]
      step_rng = jax.random.fold_in(dropout_rng, epoch * num_batches + b)
      lr = np.float32(schedule(epoch * num_batches + b))
      params, opt_state, loss = train_step(params, opt_state, train_ids[rows], train_mask[rows], train_y[rows], w,
                                           lr, step_rng)
      batch_losses.append(loss * w.sum())  # stays on the device: no sync per step
      bar.update()
    epoch_losses.append(float(sum(batch_losses)) / len(train_texts))
    logging.info("EA judge epoch %d/%d: train loss %.4f", epoch + 1, config.num_epochs, epoch_losses[-1])
  bar.close()

  judge = Judge(params=params, config=config, heldout_accuracy=0.0, encode_fn=encode_fn,
                info={"num_train": len(train_texts), "num_heldout": len(heldout_texts),
                      "train_loss_per_epoch": epoch_losses})
  heldout_logits = judge.logits_of_ids(heldout_ids, heldout_mask)
  judge.heldout_accuracy = float(np.mean(np.argmax(heldout_logits, -1) == heldout_y))
  logging.info("EA judge held-out accuracy %.4f on %d texts", judge.heldout_accuracy, len(heldout_texts))
  return judge
