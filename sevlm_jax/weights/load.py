"""Import of pretrained distilgpt2 / CLIP ViT-B/16 weights into SEVLM parameters.

  params = init_params(config, rng)
  params = load_pretrained(params, config, gpt2="distilgpt2",
                           clip="openai/clip-vit-base-patch16")

Sources are local files or directories (safetensors; see weights.io) or hub
names. Every checkpoint key must map onto a parameter of the right shape and
every mapped parameter must be in the checkpoint; the only exceptions are the
weights new in SEVLM (`NEW_IN_SEVLM`), which keep their initialisation.
"""

import logging
import os

import jax.numpy as jnp

from sevlm_jax.errors import CheckpointError
from sevlm_jax.models.config import ModelConfig
from sevlm_jax.weights import clip as clip_map
from sevlm_jax.weights import gpt2 as gpt2_map
from sevlm_jax.weights.io import read_tensors
from sevlm_jax.weights.mapping import apply_key_map, flatten, unflatten

NEW_IN_SEVLM = (
    "decoder/h_*/ln_cross_attn, decoder/h_*/crossattention/* (when the GPT-2 checkpoint has none)",
    "decoder/wte/embedding rows of the 4 added tokens (<pad>, <prefix>, <emotion>, <explanation>)",
    "vad_encoder/*", "vad_fusion/*", "vad_head/*", "contrastive_head/*",
)

Source = str | os.PathLike


def _replace(subtree: dict, converted: dict) -> dict:
  flat = flatten(subtree)
  for path, value in converted.items():
    flat[path] = jnp.asarray(value, dtype=getattr(flat[path], "dtype", jnp.float32))
  return unflatten(flat)


def load_gpt2(decoder_params: dict, config: ModelConfig, source: Source, new_token_init: str = "mean",
              seed: int = 0) -> dict:
  """params['decoder'] with the GPT-2 weights of `source` in place; the added tokens' rows as
  new_token_init says (weights/gpt2.py), "normal" ones drawn from `seed`."""
  tensors, where = read_tensors(source)
  prefix = gpt2_map.detect_prefix(tensors)
  key_map = gpt2_map.key_map(config.decoder, prefix, new_token_init, seed)
  converted, absent = apply_key_map(tensors, key_map, flatten(decoder_params), where, "decoder")
  gpt2_map.check_tied_head(tensors, prefix, where)
  rows = tensors[prefix + "wte.weight"].shape[0]
  logging.info("loaded GPT-2 weights from %s (%d word rows%s%s)", where, rows,
               f", {config.decoder.vocab_size - rows} new rows: {new_token_init}"
               if rows < config.decoder.vocab_size else "",
               ", cross-attention newly initialised" if absent else "")
  return _replace(decoder_params, converted)


def load_clip(vision_params: dict, config: ModelConfig, source: Source) -> dict:
  """params['vision'] with the CLIP vision weights of `source` (HF or OpenAI layout) in place."""
  tensors, where = read_tensors(source)
  key_map = clip_map.key_map(config.vision, tensors, where)
  converted, _ = apply_key_map(tensors, key_map, flatten(vision_params), where, "vision")
  logging.info("loaded CLIP vision weights from %s", where)
  return _replace(vision_params, converted)


def load_pretrained(params: dict, config: ModelConfig | dict, *, gpt2: Source | None = None,
                    clip: Source | None = None, new_token_init: str = "mean", seed: int = 0) -> dict:
  """A copy of `params` with the decoder from `gpt2` and the vision tower from `clip`.

  Either source may be None (that tower keeps its current values). Raises
  CheckpointError naming the file and key on any missing, unexpected or
  mis-shaped weight.
  """
  config = ModelConfig.from_dict(config)
  for name in ("decoder", "vision"):
    if name not in params:
      raise CheckpointError(f"params have no '{name}' collection; pass the output of init_params")
  out = dict(params)
  if gpt2 is not None:
    out["decoder"] = load_gpt2(params["decoder"], config, gpt2, new_token_init, seed)
  if clip is not None:
    out["vision"] = load_clip(params["vision"], config, clip)
  return out
