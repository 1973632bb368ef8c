"""Python API for prediction from a trained run.

  from sevlm_jax.inference.predictor import Predictor
  predictor = Predictor.from_workdir("/tmp/sevlm_demo")
  predictor.predict(["painting.jpg", pil_image, uint8_array])
  # -> [{"emotion": "awe", "explanation": "...", "text": "..."}, ...]

  predictor.emotion_distribution(["painting.jpg"])
  # -> float32 [1, 9]: probabilities of the nine emotions (vocab.EMOTIONS order)

  predictor.explain(["painting.jpg"], emotion="fear", return_attention=True, return_vad=True)
  # -> [{"emotion": "fear", "explanation": ..., "probabilities": [9 floats],
  #      "words": [...], "attention": float32 [words, G, G], "tokens": [...], "vad": [tokens, 3]}]

  predictor.with_decoding(decoding="beam", beam_width=4, length_penalty=1.0).predict([...])

  Predictor.from_released("jing5566/SEVLM", lexicon="NRC-VAD-Lexicon.txt")  # the authors' model,
  # with their inference behaviour and no data set (inference/released.py)

Everything the predictor needs is in the workdir (config.json, vad_table.npy, checkpoints),
so no data set or lexicon is read. Images are resized as the data set's were, padded to a
fixed batch so the jitted generation compiles once.
"""

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.config import migrate
from sevlm_jax.data import batching
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.errors import CheckpointNotFoundError, InputError
from sevlm_jax.inference import decode as decode_lib
from sevlm_jax.inference import hub
from sevlm_jax.inference import model_dir
from sevlm_jax.inference import released
from sevlm_jax.inference import sentences
from sevlm_jax.inference import trace as trace_lib
from sevlm_jax.models import build
from sevlm_jax.weights import pretrained


def emotion_first_tokens(tokenizer) -> np.ndarray:
  """int32[9]: the first BPE token of " {emotion}" for each emotion, in EMOTIONS order.

  The model writes an emotion word right after the prompt; multi-token words ("content" "ment",
  "something" "else") are told apart by their first token, so the nine must differ.
  """
  ids = [tokenizer.encode(" " + name)[0] for name in vocab.EMOTIONS]
  if len(set(ids)) != len(ids):
    raise ValueError(f"the emotions' first tokens are not distinct: {dict(zip(vocab.EMOTIONS, ids))}")
  return np.asarray(ids, np.int32)


def emotion_columns(tokenizer, output_ids=None) -> tuple[np.ndarray, np.ndarray]:
  """(columns int32[9], known bool[9]): where each emotion's first token sits among the logits,
  and whether it is there at all (a restricted output vocabulary may lack it)."""
  first = emotion_first_tokens(tokenizer)
  if output_ids is None:
    return first, np.ones(len(first), bool)
  position = {int(t): k for k, t in enumerate(np.asarray(output_ids))}
  columns = np.asarray([position.get(int(t), 0) for t in first], np.int32)
  known = np.asarray([int(t) in position for t in first])
  if not known.any():
    raise ValueError("no emotion word is in the run's output vocabulary")
  return columns, known


def emotion_probs(logits_BxV, columns, known) -> jax.Array:
  """float32 [B, 9]: the softmax of the logits after "the emotion is" over the emotions' first
  tokens (an emotion missing from the output vocabulary gets 0)."""
  logits_Bx9 = jnp.where(jnp.asarray(known), logits_BxV[:, jnp.asarray(columns)], -jnp.inf)
  return jax.nn.softmax(logits_Bx9.astype(jnp.float32), axis=-1)


def make_emotion_fn(model, tokenizer, output_ids=None):
  """Jitted (params, images, vad_table) -> float32 [B, 9] emotion probabilities.

  The softmax of the next-token logits at the last prompt position ("<bos> the emotion is"),
  renormalised over the nine emotions' first tokens; a softmax over just their logits is the same
  and exact in float32. With a restricted output vocabulary, an emotion whose first token is not in
  it gets probability 0 (the model cannot write it).
  """
  prompt_L = jnp.asarray(tokenizer.prompt_ids, jnp.int32)
  columns, known = emotion_columns(tokenizer, output_ids)
  if output_ids is not None:
    output_ids = jnp.asarray(output_ids, jnp.int32)

  @jax.jit
  def emotion_probs_fn(params, images, vad_table):
    variables = {"params": params}
    patches = model.apply(variables, images, method=model.encode_image)
    ids_BxL = jnp.broadcast_to(prompt_L, (images.shape[0], prompt_L.shape[0]))
    segs_BxL = jnp.full_like(ids_BxL, model.config.emotion_segment_id)
    out = model.apply(variables, patches, ids_BxL, segs_BxL, vad_table[ids_BxL],
                      jnp.ones_like(ids_BxL), output_ids=output_ids)
    return emotion_probs(out["logits"][:, -1], columns, known)

  return emotion_probs_fn


def check_emotions(emotion, count: int) -> list[str]:
  """One emotion name per image from a name (for all) or a list (one each), or InputError."""
  names = [emotion] * count if isinstance(emotion, str) else list(emotion)
  if len(names) != count:
    raise InputError(f"emotion: got {len(names)} names for {count} images (give one name for"
                     " all, or one per image)")
  out = []
  for i, name in enumerate(names):
    clean = " ".join(str(name).lower().split())
    if clean not in vocab.EMOTIONS:
      raise InputError(f"emotion {i}: {name!r} is not one of the nine ArtEmis emotions: "
                       f"{', '.join(vocab.EMOTIONS)}")
    out.append(clean)
  return out


class Predictor:
  """Jitted emotion + explanation generation with a trained run's parameters."""

  def __init__(self, config: ml_collections.ConfigDict, params, vad_table: np.ndarray,
               batch_size: int | None = None, output_ids: np.ndarray | None = None, tokenizer=None):
    config = migrate.migrate(config)  # a config of an older release: brought up to date once
    self.config = config
    self.tokenizer = tokenizer or tokenizer_lib.load_tokenizer()
    self.model = build.build_model(config)
    self.params = params
    self.vad_table = jax.numpy.asarray(vad_table)
    self.batch_size = batch_size or config.eval.batch_size
    self.image_size = config.data.image_size
    self.resize_filter = config.data.resize_filter  # as the training data was
    # The 600-pixel step before it, when the training data had it (the official variant).
    self.prescaled = {"prescale_max_side": config.data.prescale_max_side,
                      "prescale_filter": config.data.prescale_filter}
    self.options = decode_lib.DecodeOptions.from_config(config.eval)  # checked here, once
    self._decode = decode_lib.make_decode_fn(self.model, self.options, self.tokenizer, output_ids)
    self._emotion_probs = make_emotion_fn(self.model, self.tokenizer, output_ids)
    self._output_ids = output_ids
    self._columns = emotion_columns(self.tokenizer, output_ids)
    self._traced_fn = None  # the traced decoding loop, compiled on first use
    self._rng = jax.random.PRNGKey(self.options.seed)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = "best_acc", batch_size: int | None = None
                   ) -> "Predictor":
    config_path = os.path.join(workdir, "config.json")
    table_path = os.path.join(workdir, "vad_table.npy")
    for path in (config_path, table_path):
      if not io_utils.as_path(path).exists():  # the workdir: a local folder or gs://...
        raise CheckpointNotFoundError(
            f"{path} is missing: {workdir} is not a trained SEVLM run (train one with "
            "python -m sevlm_jax.main --config=configs/sevlm.py:demo --workdir=DIR)")
    config = migrate.load_json(config_path)
    if pretrained.evaluates_imported_weights(config, workdir):  # the authors' released model
      params = pretrained.initial_params(config, build.build_model(config).config)
    else:
      params, _ = ckpt_lib.restore_params(workdir, checkpoint)
    vocab_path = os.path.join(workdir, "output_vocab.npy")
    output_ids = io_utils.load_npy(vocab_path) if io_utils.as_path(vocab_path).exists() else None
    return cls(config, params, io_utils.load_npy(table_path), batch_size=batch_size,
               output_ids=output_ids)

  @classmethod
  def from_released(cls, source: str, lexicon: str | None = None,
                    config: ml_collections.ConfigDict | None = None, batch_size: int | None = None
                    ) -> "Predictor":
    """The authors' released SEVLM (a directory holding nle_model_<name>/ and its
    ckpt_stats_<name>.tar, an nle_model_<name> directory, or the hub name jing5566/SEVLM) with no
    data set: lexicon is your VAD lexicon (NRC-VAD v1); config defaults to
    configs/sevlm.py:artemis_v1,official, the authors' inference behaviour (inference/released.py)."""
    ready = released.prepare(source, lexicon=lexicon, config=config)  # checked; its VAD table
    build.check_config(ready.config)
    params = pretrained.initial_params(ready.config, build.build_model(ready.config).config)
    return cls(ready.config, params, ready.vad_table, batch_size=batch_size,
               tokenizer=ready.tokenizer)

  @classmethod
  def from_pretrained(cls, directory: str, batch_size: int | None = None, lexicon: str | None = None,
                      revision: str | None = None) -> "Predictor":
    """A model directory written by `--mode=export` (inference/model_dir.py): a local folder, or a
    Hugging Face hub repository id ("owner/name", at `revision`: a branch, tag or commit) that is
    downloaded once and then read from the cache (inference/hub.py). No workdir, data set or
    checkpoint manager; lexicon only for an export that left its VAD table out."""
    folder = hub.resolve(directory, revision)
    if released.holds_released_model(folder):  # the authors' layout, local or from the hub
      return cls.from_released(str(folder), lexicon=lexicon, batch_size=batch_size)
    exported = model_dir.load_exported(folder, lexicon=lexicon)
    return cls(exported.config, exported.params, exported.vad_table, batch_size=batch_size,
               output_ids=exported.output_ids, tokenizer=exported.tokenizer)

  def preprocess(self, images: Sequence[Any]) -> np.ndarray:
    return np.stack([images_lib.to_pixels(im, self.image_size, f"image {i}", self.resize_filter,
                                          **self.prescaled)
                     for i, im in enumerate(images)])

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

  def with_decoding(self, **options) -> "Predictor":
    """A predictor with the same parameters and other decoding choices, named as the eval
    config's fields that decode.DecodeOptions holds: decoding (a name in decode.METHODS: greedy |
    top_p | beam), top_p, temperature, beam_width, length_penalty, max_new_tokens,
    steps_per_check, stop_on, explanation_after, seed."""
    self.options.replace(**options)  # an unknown name or a bad value: ConfigError, before work
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.eval.update(options)
    return Predictor(config, self.params, np.asarray(self.vad_table), self.batch_size,
                     self._output_ids, tokenizer=self.tokenizer)

  def predict(self, images: Sequence[Any], *, emotion: str | Sequence[str] | None = None,
              return_attention: bool = False, return_vad: bool = False) -> list[dict[str, Any]]:
    """Emotion and explanation for each image (file paths, PIL images or uint8/float arrays).

    emotion: the explanation that follows "the emotion is {emotion} because" (one name for all
    images, or one per image); see explain.
    return_attention: each dict also gets 'words' (the explanation's words) and 'attention'
    (float32 [words, G, G]: the cross-attention over the GxG image patches while writing each
    word; see inference.trace for tokens vs words and the layers averaged).
    return_vad: each dict also gets 'tokens' (the explanation's BPE tokens) and 'vad' (float32
    [tokens, 3]: the VAD head's valence, arousal, dominance for each).
    Either flag, or an emotion, runs the traced decoding loop (its own compile), which also
    gives 'probabilities': the nine emotions' probabilities (EMOTIONS order) from the first
    decoding step's logits, with no second pass of the vision tower.
    """
    if emotion is None and not (return_attention or return_vad):
      out = []
      for padded, n in self._batches(images):
        self._rng, rng = jax.random.split(self._rng)
        tokens = np.asarray(self._decode(self.params, padded, self.vad_table, rng)["tokens"])
        out += [sentences.prediction(self.tokenizer, tokens[row], self.options.explanation_after)
                for row in range(n)]
      return out
    preds = self._traced(images, emotion)
    for p in preds:
      if not return_attention:
        del p["words"], p["attention"]
      if not return_vad:
        del p["tokens"], p["vad"]
    return preds

  def explain(self, images: Sequence[Any], emotion: str | Sequence[str], *,
              return_attention: bool = False, return_vad: bool = False) -> list[dict[str, Any]]:
    """The explanation of a given emotion: generation continues "the emotion is {emotion}
    because" (the forced tokens are fed as if generated, with their segments). emotion: one of
    vocab.EMOTIONS for every image, or a list with one per image. Returns predict's dicts."""
    if emotion is None:
      raise InputError(f"explain needs an emotion: one of {', '.join(vocab.EMOTIONS)}")
    return self.predict(images, emotion=emotion, return_attention=return_attention,
                        return_vad=return_vad)

  def predict_each(self, images: Sequence[Any], *, emotion: str | Sequence[str] | None = None
                   ) -> list[dict[str, Any]]:
    """predict (with an emotion: explain) for each image, where an image that cannot be read gets
    {"error": message} and the others their results (predict raises InputError for it instead)."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
      images = [images]
    emotions = None if emotion is None else check_emotions(emotion, len(images))
    out: list[dict[str, Any]] = []
    readable = {}  # position in `images` -> its pixels
    for i, image in enumerate(images):
      try:
        readable[i] = images_lib.to_pixels(image, self.image_size, f"image {i}", self.resize_filter,
                                           **self.prescaled)
        out.append({})
      except InputError as e:
        out.append({"error": str(e)})
    if readable:  # already image_size x image_size: predict's preprocessing leaves them as they are
      chosen = None if emotions is None else [emotions[i] for i in readable]
      for i, pred in zip(readable, self.predict(list(readable.values()), emotion=chosen)):
        out[i] = pred
    return out

  def analyse(self, images: Sequence[Any], emotion: str | Sequence[str] | None = None
              ) -> list[dict[str, Any]]:
    """predict with everything: probabilities, attention per word and VAD per token."""
    return self.predict(images, emotion=emotion, return_attention=True, return_vad=True)

  def forced_ids(self, emotions: Sequence[str]) -> np.ndarray:
    """int32 [N, F]: " {emotion} because" per image, -1 after a shorter one; F is the longest of
    the nine, so every batch has one shape."""
    parts = {name: self.tokenizer.encode(" " + name) + [self.tokenizer.because_id]
             for name in vocab.EMOTIONS}
    width = max(len(p) for p in parts.values())
    forced = np.full((len(emotions), width), -1, np.int32)
    for row, name in enumerate(emotions):
      forced[row, :len(parts[name])] = parts[name]
    return forced

  def _traced(self, images, emotion) -> list[dict[str, Any]]:
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
      images = [images]
    emotions = None if emotion is None else check_emotions(emotion, len(images))
    if self._traced_fn is None:
      self._traced_fn = decode_lib.make_decode_fn(self.model, self.options, self.tokenizer,
                                                  self._output_ids, trace=True)
    out, start = [], 0
    for padded, n in self._batches(images):
      self._rng, rng = jax.random.split(self._rng)
      # Nothing forced is a forced start of -1s: one compile serves both.
      forced = np.full((self.batch_size, self.forced_ids(vocab.EMOTIONS[:1]).shape[1]), -1,
                       np.int32)
      if emotions is not None:
        forced[:n] = self.forced_ids(emotions[start:start + n])
      start += n
      got = self._traced_fn(self.params, padded, self.vad_table, rng, forced)
      probs = np.asarray(emotion_probs(got["first_logits"], *self._columns))
      got = {k: np.asarray(v) for k, v in got.items()}
      for row in range(n):
        entry = sentences.prediction(self.tokenizer, got["tokens"][row],
                                     self.options.explanation_after)
        entry["probabilities"] = [float(p) for p in probs[row]]
        entry.update(trace_lib.trace_entry(self.tokenizer, got["tokens"][row],
                                           int(got["lengths"][row]), got["attention"][row],
                                           got["vad"][row], self.tokenizer.because_id,
                                           self.options.explanation_after))
        out.append(entry)
    return out
