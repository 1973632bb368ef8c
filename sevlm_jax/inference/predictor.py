"""Python API for prediction from a trained run.

  from sevlm_jax.inference.predictor import Predictor
  predictor = Predictor.from_workdir("/tmp/sevlm_demo")
  predictor.predict(["painting.jpg", pil_image, uint8_array])
  # -> [{"emotion": "awe", "explanation": "...", "text": "..."}, ...]

  predictor.emotion_distribution(["painting.jpg"])
  # -> float32 [1, 9]: probabilities of the nine emotions (vocab.EMOTIONS order)

Everything the predictor needs is in the workdir (config.json, vad_table.npy, checkpoints),
so no data set or lexicon is read. Images are resized as the data set's were, padded to a
fixed batch so the jitted generation compiles once.
"""

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import run as run_lib
from sevlm_jax import vocab
from sevlm_jax.data import batching
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.errors import CheckpointNotFoundError
from sevlm_jax.inference import decode as decode_lib
from sevlm_jax.inference import export as export_lib


def emotion_first_tokens(tokenizer) -> np.ndarray:
  """int32[9]: the first BPE token of " {emotion}" for each emotion, in EMOTIONS order.

  The model writes an emotion word right after the prompt; multi-token words ("content" "ment",
  "something" "else") are told apart by their first token, so the nine must differ.
  """
  ids = [tokenizer.encode(" " + name)[0] for name in vocab.EMOTIONS]
  if len(set(ids)) != len(ids):
    raise ValueError(f"the emotions' first tokens are not distinct: {dict(zip(vocab.EMOTIONS, ids))}")
  return np.asarray(ids, np.int32)


def make_emotion_fn(model, tokenizer, output_ids=None):
  """Jitted (params, images, vad_table) -> float32 [B, 9] emotion probabilities.

  The softmax of the next-token logits at the last prompt position ("<bos> the emotion is"),
  renormalised over the nine emotions' first tokens; a softmax over just their logits is the same
  and exact in float32. With a restricted output vocabulary, an emotion whose first token is not in
  it gets probability 0 (the model cannot write it).
  """
  prompt_L = jnp.asarray(tokenizer.prompt_ids, jnp.int32)
  first = emotion_first_tokens(tokenizer)
  if output_ids is None:
    columns, known = first, np.ones(len(first), bool)
  else:
    position = {int(t): k for k, t in enumerate(np.asarray(output_ids))}
    columns = np.asarray([position.get(int(t), 0) for t in first], np.int32)
    known = np.asarray([int(t) in position for t in first])
    if not known.any():
      raise ValueError("no emotion word is in the run's output vocabulary")
    output_ids = jnp.asarray(output_ids, jnp.int32)
  columns, known = jnp.asarray(columns), jnp.asarray(known)

  @jax.jit
  def emotion_probs(params, images, vad_table):
    variables = {"params": params}
    patches = model.apply(variables, images, method=model.encode_image)
    ids_BxL = jnp.broadcast_to(prompt_L, (images.shape[0], prompt_L.shape[0]))
    segs_BxL = jnp.full_like(ids_BxL, model.config.emotion_segment_id)
    out = model.apply(variables, patches, ids_BxL, segs_BxL, vad_table[ids_BxL],
                      jnp.ones_like(ids_BxL), output_ids=output_ids)
    logits_Bx9 = jnp.where(known, out["logits"][:, -1][:, columns], -jnp.inf)
    return jax.nn.softmax(logits_Bx9.astype(jnp.float32), axis=-1)

  return emotion_probs


class Predictor:
  """Jitted emotion + explanation generation with a trained run's parameters."""

  def __init__(self, config: ml_collections.ConfigDict, params, vad_table: np.ndarray,
               batch_size: int | None = None, output_ids: np.ndarray | None = None, tokenizer=None):
    self.config = config
    self.tokenizer = tokenizer or tokenizer_lib.load_tokenizer()
    self.model = run_lib.build_model(config)
    self.params = params
    self.vad_table = jax.numpy.asarray(vad_table)
    self.batch_size = batch_size or config.eval.batch_size
    self.image_size = config.data.image_size
    self._generate = decode_lib.make_generate_fn(self.model, config.eval, self.tokenizer,
                                               output_ids)
    self._emotion_probs = make_emotion_fn(self.model, self.tokenizer, output_ids)
    self._rng = jax.random.PRNGKey(config.seed)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = "best_acc", batch_size: int | None = None
                   ) -> "Predictor":
    config_path = os.path.join(workdir, "config.json")
    table_path = os.path.join(workdir, "vad_table.npy")
    for path in (config_path, table_path):
      if not os.path.exists(path):
        raise CheckpointNotFoundError(
            f"{path} is missing: {workdir} is not a trained SEVLM run (train one with "
            "python -m sevlm_jax.main --config=configs/sevlm.py:demo --workdir=DIR)")
    with open(config_path, encoding="utf-8") as f:
      config = ml_collections.ConfigDict(json.load(f))
    params, _ = ckpt_lib.restore_params(workdir, checkpoint)
    vocab_path = os.path.join(workdir, "output_vocab.npy")
    output_ids = np.load(vocab_path) if os.path.exists(vocab_path) else None
    return cls(config, params, np.load(table_path), batch_size=batch_size, output_ids=output_ids)

  @classmethod
  def from_pretrained(cls, directory: str, batch_size: int | None = None, lexicon: str | None = None
                      ) -> "Predictor":
    """A model directory written by `--mode=export` (inference/export.py): no workdir, data set
    or checkpoint manager; lexicon only for an export that left its VAD table out."""
    exported = export_lib.load_exported(directory, lexicon=lexicon)
    return cls(exported.config, exported.params, exported.vad_table, batch_size=batch_size,
               output_ids=exported.output_ids, tokenizer=exported.tokenizer)

  def preprocess(self, images: Sequence[Any]) -> np.ndarray:
    return np.stack([images_lib.to_pixels(im, self.image_size, f"image {i}") for i, im in enumerate(images)])

  def _batches(self, images):
    """(padded uint8 batch, number of real rows) chunks: a fixed batch shape compiles once."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
      images = [images]
    if len(images) == 0:
      return
    pixels = self.preprocess(images)
    for start, stop in batching.batch_bounds(len(pixels), self.batch_size):
      yield batching.pad_rows(pixels[start:stop], self.batch_size), stop - start

  def emotion_distribution(self, images: Sequence[Any]) -> np.ndarray:
    """float32 [N, 9]: each image's probabilities of the nine emotions (EMOTIONS order).

    The model's next-token distribution after "the emotion is", renormalised over the emotions'
    first tokens (see make_emotion_fn); its argmax is the emotion greedy decoding starts to write
    whenever that starts with an emotion word.
    """
    rows = [np.asarray(self._emotion_probs(self.params, padded, self.vad_table))[:n]
            for padded, n in self._batches(images)]
    return np.concatenate(rows) if rows else np.zeros((0, vocab.NUM_EMOTIONS), np.float32)

  def predict(self, images: Sequence[Any]) -> list[dict[str, str]]:
    """Emotion and explanation for each image (file paths, PIL images or uint8/float arrays)."""
    out = []
    for padded, n in self._batches(images):
      self._rng, rng = jax.random.split(self._rng)
      tokens = np.asarray(self._generate(self.params, padded, self.vad_table, rng))
      out += [decode_lib.prediction(self.tokenizer, tokens[row]) for row in range(n)]
    return out
