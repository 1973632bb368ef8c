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
from sevlm_jax.weights import sevlm as sevlm_map
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


def load_sevlm(params: dict, config: ModelConfig, source: Source) -> dict:
  """A copy of `params` with every part but the vision tower from the authors' released
  checkpoint (see weights/sevlm.py): decoder, VAD encoder and fusion, VAD and contrastive heads."""
  model_dir, stats = sevlm_map.locate(str(source))
  tensors, where = sevlm_map.read_decoder_tensors(model_dir)
  parts = {k: params[k] for k in sevlm_map.DECODER_PARTS if k in params}
  key_map = sevlm_map.decoder_key_map(config, gpt2_map.key_map(config.decoder, "transformer."))
  converted, _ = apply_key_map(tensors, key_map, flatten(parts), where, "params")
  gpt2_map.check_tied_head(tensors, "transformer.", where)
  out = dict(params)
  out.update(_replace(parts, converted))
  if config.use_vad_embedding:
    vad_tensors, vad_where = sevlm_map.read_vad_encoder_tensors(stats)
    converted, _ = apply_key_map(vad_tensors, sevlm_map.vad_encoder_key_map(config),
                                 flatten(params["vad_encoder"]), vad_where, "vad_encoder")
    out["vad_encoder"] = _replace(params["vad_encoder"], converted)
  logging.info("loaded the released SEVLM weights from %s and %s", model_dir, stats)
  return out


def load_pretrained(params: dict, config: ModelConfig | dict, *, gpt2: Source | None = None,
                    clip: Source | None = None, sevlm: Source | None = None,
                    new_token_init: str = "mean", seed: int = 0) -> dict:
  """A copy of `params` with the decoder from `gpt2`, the vision tower from `clip`, and every
  part but the vision tower from `sevlm` (the authors' released checkpoint; `gpt2` is then not
  read, as sevlm replaces all it would give). `new_token_init` and `seed` set GPT-2's 4 added
  token rows (see gpt2.py's resize); the released checkpoint brings its own.

  Any source may be None (those parts keep their current values). Raises
  CheckpointError naming the file and key on any missing, unexpected or
  mis-shaped weight.
  """
  config = ModelConfig.from_dict(config)
  for name in ("decoder", "vision"):
    if name not in params:
      raise CheckpointError(f"params have no '{name}' collection; pass the output of init_params")
  out = dict(params)
  if sevlm is not None:
    out = load_sevlm(out, config, sevlm)
  elif gpt2 is not None:
    out["decoder"] = load_gpt2(params["decoder"], config, gpt2, new_token_init, seed)
  if clip is not None:
    out["vision"] = load_clip(params["vision"], config, clip)
  return out
