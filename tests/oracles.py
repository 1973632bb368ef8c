"""Slow, obvious versions of product code, used by the tests as references (not shipped)."""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sevlm_jax.data import pipeline
from sevlm_jax.data import records
from sevlm_jax.data import vad
from sevlm_jax.inference.decode import _stop_ids
from sevlm_jax.models.sevlm import SEVLM


def demo_lexicon() -> vad.VadLexicon:
  """The project's own small lexicon (not derived from any published lexicon)."""
  return vad.load_lexicon(vad.DEMO_LEXICON_PATH, fmt="nrc_v2")


def eval_batches(ready_dir, split: str, *, batch_size: int, shard_index: int = 0, shard_count: int = 1):
  """Images of a split in order, in fixed-size batches; the last one padded.

  Yields {'image': uint8[B,H,W,3], 'image_index': int32[B] (-1 on padding),
  'valid': bool[B]}. With shard_count > 1, shard i takes records i, i+n, ...
  and every shard yields the same number of batches.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  source = records.load_split(ready_dir, split)
  size = int(records.load_meta(ready_dir)["image_size"])
  indices = np.arange(shard_index, len(source), shard_count)
  num_batches = math.ceil(math.ceil(len(source) / shard_count) / batch_size)
  for b in range(num_batches):
    chunk = indices[b * batch_size:(b + 1) * batch_size]
    image_index = np.full((batch_size,), -1, np.int32)
    image_index[:len(chunk)] = chunk
    yield {"image": pipeline._read_images(source, image_index, size), "image_index": image_index,
           "valid": image_index >= 0}


@functools.partial(jax.jit, static_argnums=0)
def full_pass(model: SEVLM, params, patches_BxPxD, ids_BxL, segs_BxL, vad_table_Vx3, mask_BxL):
  """Jitted teacher-forced pass with VAD features gathered from the table (no cache)."""
  return model.apply({"params": params}, patches_BxPxD, ids_BxL, segs_BxL, vad_table_Vx3[ids_BxL],
                     mask_BxL)


def generate_reference(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_ids, *,
                       max_new_tokens: int = 25, because_id: int, eos_id: int | Sequence[int],
                       pad_id: int):
  """Greedy decoding the slow, obvious way, for tests: no cache, Python control flow.

  Every step runs the full teacher-forced pass over the prefix so far (right
  padded to a fixed length and masked, so that it compiles once) and picks
  tokens with numpy. Returns numpy (tokens BxN, lengths B, logits BxNxV) with
  generate's conventions.
  """
  c = model.config
  stop = set(_stop_ids(eos_id))
  variables = {"params": params}
  x = jnp.asarray(images_or_patches)
  patches = model.apply(variables, x, method=SEVLM.encode_image) if x.ndim == 4 else x
  vad_table = jnp.asarray(vad_table_Vx3, jnp.float32)
  prompt = np.asarray(prompt_ids, np.int32)
  b, lp, n = patches.shape[0], prompt.size, max_new_tokens
  ids = np.full((b, lp + n), pad_id, np.int32)
  ids[:, :lp] = prompt
  segs = np.full((b, lp + n), c.emotion_segment_id, np.int32)
  tokens = np.full((b, n), pad_id, np.int32)
  lengths = np.full((b,), n, np.int32)
  logits_log = None
  done = np.zeros((b,), bool)
  in_expl = np.zeros((b,), bool)
  for i in range(n):
    length = lp + i
    mask = (np.arange(lp + n) < length).astype(np.int32)[None].repeat(b, 0)
    logits = np.asarray(full_pass(model, params, patches, ids, segs, vad_table, mask)["logits"][
        :, length - 1])
    if logits_log is None:
      logits_log = np.zeros((b, n, logits.shape[-1]), np.float32)
    logits_log[:, i] = logits
    for j in range(b):
      tok = pad_id if done[j] else int(np.argmax(logits[j]))
      if not done[j] and tok in stop:
        lengths[j], done[j] = i, True
      in_expl[j] |= tok == because_id
      tokens[j, i] = tok
    if done.all():
      break
    ids[:, length] = tokens[:, i]
    segs[:, length] = np.where(in_expl, c.explanation_segment_id, c.emotion_segment_id)
  return tokens, lengths, logits_log
