"""SEVLM: CLIP ViT + GPT-2 with cross-attention + VAD encoder/fusion + heads.

Outputs only; the losses live elsewhere and read these outputs. Top-level
parameter collections (optimiser groups and freezing select on these names):
'vision', 'decoder', 'vad_encoder', 'vad_fusion' (absent when
use_vad_embedding is off), 'vad_head', 'contrastive_head'.

Usage:
  params = init_params(config, rng)
  model = SEVLM(config)
  patches = model.apply({'params': params}, images, method=SEVLM.encode_image)
  out = model.apply({'params': params}, patches, ids, segs, vad_table[ids], mask)
  scores = model.apply({'params': params}, out['image_feat'], out['emotion_feat'],
                       out['explanation_feat'], method=SEVLM.score)

Decoding with the KV cache (see sevlm_jax.inference.decode):
  cache = model.apply(v, patches, max_length, method=SEVLM.init_cache)
  out, cache = model.apply(v, cache, ids_BxT, segs_BxT, vad_BxTx3, method=SEVLM.decode_step)

Where the text looks in the image (any of the calls above, with mutable=['intermediates']):
  (out, cache), inter = model.apply(v, ..., method=SEVLM.decode_step, mutable=['intermediates'])
  attention_BxTxP = mean_cross_attention(inter['intermediates'], num_patches=P)
"""

from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp

from sevlm_jax.models import gpt2
from sevlm_jax.models import layers
from sevlm_jax.models.clip_vit import VisionTower
from sevlm_jax.models.config import ModelConfig
from sevlm_jax.models.heads import ContrastiveHead
from sevlm_jax.models.segments import config_part_masks
from sevlm_jax.models.vad import VADEncoder, copy_first_layer, fuse_explanation_vad
# The pure masked mean of the losses module: the contrastive head reads the same reduction.


class SEVLM(nn.Module):
  config: ModelConfig

  def setup(self):
    c = self.config
    dtype = c.compute_dtype
    init = nn.initializers.normal(0.02)  # the public code's new layers get GPT-2's init
    self.vision = VisionTower(c.vision, c.image_norm, dtype, c.vision_attention)
    self.decoder = gpt2.GPT2Decoder(c.decoder, dtype, c.decode_kernels)
    if c.use_vad_embedding:
      self.vad_encoder = VADEncoder(c.vad, c.decode_kernels)
      self.vad_fusion = layers.DenseParams(c.decoder.width, kernel_init=init)
    self.vad_head = nn.Dense(3, kernel_init=init)
    self.contrastive_head = ContrastiveHead(c.contrastive)

  # --- image ---------------------------------------------------------------

  def encode_image(self, images_BxHxWx3):
    """uint8 (0..255) or float (0..1) images -> patch tokens BxPxD after ln_post."""
    if self.config.blank_images:  # every door into the model goes through here
      grey = 128 if jnp.issubdtype(images_BxHxWx3.dtype, jnp.integer) else 128 / 255
      images_BxHxWx3 = jnp.full_like(images_BxHxWx3, grey)
    return self.vision(images_BxHxWx3)[0]

  # --- full pass -------------------------------------------------------------

  def _check_text(self, input_ids_BxL, segment_ids_BxL, token_vad_BxLx3, cache_length=None):
    c = self.config
    b, l = input_ids_BxL.shape
    if segment_ids_BxL.shape != (b, l):
      raise ValueError(f"segment_ids shape {tuple(segment_ids_BxL.shape)} != input_ids shape"
                       f" {(b, l)}")
    if token_vad_BxLx3.shape != (b, l, 3):
      raise ValueError(f"token_vad shape {tuple(token_vad_BxLx3.shape)} != {(b, l, 3)}"
                       " (gather it from the vocab x 3 table: vad_table[input_ids])")
    if l > c.decoder.max_positions:
      raise ValueError(f"sequence length {l} exceeds model.decoder.max_positions="
                       f"{c.decoder.max_positions}")
    if cache_length is not None and l > cache_length:
      raise ValueError(f"{l} new tokens do not fit a cache of {cache_length} slots")

  def _check_patches(self, patches_BxPxD, batch):
    """Patches of `batch` images, or of batch / G images shared by G consecutive sequences."""
    d = self.config.decoder.width
    b = patches_BxPxD.shape[0] if patches_BxPxD.ndim == 3 else 0
    if patches_BxPxD.ndim != 3 or patches_BxPxD.shape[-1] != d or b == 0 or batch % b:
      raise ValueError(f"patches must be {batch}xPx{d} (or one image per group of consecutive"
                       f" sequences), got shape {tuple(patches_BxPxD.shape)}")

  def embed_inputs(self, input_ids_BxL, segment_ids_BxL, token_vad_BxLx3, token_mask_BxL,
                   deterministic=True):
    """Decoder input embeddings, with VAD fused into explanation tokens."""
    l = input_ids_BxL.shape[1]
    x_BxLxD = self.decoder.embed(input_ids_BxL, segment_ids_BxL, jnp.arange(l), deterministic)
    if self.config.use_vad_embedding:
      vad_BxLx3 = self.vad_encoder(token_vad_BxLx3, token_mask_BxL, deterministic)
      _, explanation_BxL = config_part_masks(segment_ids_BxL, self.config)
      x_BxLxD = fuse_explanation_vad(x_BxLxD, vad_BxLx3, explanation_BxL,
                                     *self.vad_fusion(self.config.decoder.width + 3))
    return x_BxLxD

  def __call__(self, patches_BxPxD, input_ids_BxL, segment_ids_BxL, token_vad_BxLx3,
               token_mask_BxL, deterministic=True, output_ids=None, logits_dtype=jnp.float32,
               pad_vocab_to: int = 1):
    """Teacher-forced pass. token_mask: 1 for real tokens, 0 for right padding.

    patches: one image per sequence, or one per group of G consecutive sequences (the
    pairs of the train step): each image's cross-attention K/V are then computed once.
    output_ids: optional token ids the logits are restricted to (BxLx|output_ids|).
    pad_vocab_to: pads the logits' last axis to a multiple of it with never-chosen columns
    (see GPT2Decoder.logits).
    Returns a dict: logits BxLxV (logits_dtype), hidden BxLxD, vad_pred BxLx3 (at t,
    for token t+1), image_feat BxD (mean of patches), emotion_feat and
    explanation_feat BxD (masked means of hidden over each part, see models/segments.py; no
    padding unless model.contrastive.mean_over_padding).

    With mean_over_padding the padding positions' hidden states enter the explanation mean, so
    they are computed as the public code computes them: padding has the explanation segment
    and the decoder's self-attention masks nothing but the future. Real positions are
    unaffected (right padding, causal decoder).
    """
    self._check_text(input_ids_BxL, segment_ids_BxL, token_vad_BxLx3)
    self._check_patches(patches_BxPxD, input_ids_BxL.shape[0])
    c = self.config
    real_BxL = token_mask_BxL.astype(bool)
    decoder_mask_BxL = token_mask_BxL
    if c.contrastive.mean_over_padding:
      segment_ids_BxL = jnp.where(real_BxL, segment_ids_BxL, c.explanation_segment_id)
      decoder_mask_BxL = jnp.ones_like(token_mask_BxL)
    x_BxLxD = self.embed_inputs(input_ids_BxL, segment_ids_BxL, token_vad_BxLx3, token_mask_BxL,
                                deterministic)
    hidden_BxLxD, _ = self.decoder.transform(x_BxLxD, layers.causal_mask(decoder_mask_BxL),
                                             patches_BxPxD, deterministic=deterministic)
    emotion_BxL, explanation_BxL = config_part_masks(segment_ids_BxL, c)
    if not c.contrastive.mean_over_padding:
      explanation_BxL = explanation_BxL & real_BxL
    per_image = input_ids_BxL.shape[0] // patches_BxPxD.shape[0]
    return {
        "logits": self.decoder.logits(hidden_BxLxD, output_ids, logits_dtype, pad_vocab_to),
        "hidden": hidden_BxLxD,
        "vad_pred": self.vad_head(hidden_BxLxD.astype(jnp.float32)),
        "image_feat": jnp.repeat(jnp.mean(patches_BxPxD.astype(jnp.float32), axis=1), per_image,
                                 axis=0),
        "emotion_feat": layers.masked_mean(hidden_BxLxD, real_BxL & emotion_BxL),
        "explanation_feat": layers.masked_mean(hidden_BxLxD, explanation_BxL),
    }

  def score(self, image_feat_BxD, emotion_feat_BxD, explanation_feat_BxD):
    """Contrastive head: one float32 score per (image, emotion, explanation) triple."""
    return self.contrastive_head(image_feat_BxD, emotion_feat_BxD, explanation_feat_BxD)

  # --- incremental decoding ------------------------------------------------------

  def init_cache(self, patches_BxPxD, max_length: int):
    """Cache for up to max_length tokens; the image's cross-attention K/V are computed here once."""
    c = self.config
    if max_length > c.decoder.max_positions:
      raise ValueError(f"max_length {max_length} exceeds model.decoder.max_positions="
                       f"{c.decoder.max_positions}")
    self._check_patches(patches_BxPxD, patches_BxPxD.shape[0])
    cache = {"index": jnp.zeros((), jnp.int32),
             "decoder": self.decoder.init_cache(patches_BxPxD, max_length)}
    if c.use_vad_embedding:
      cache["vad"] = self.vad_encoder.init_cache(patches_BxPxD.shape[0], max_length)
    return cache

  def decode_step(self, cache, input_ids_BxT, segment_ids_BxT, token_vad_BxTx3, output_ids=None,
                  loop_weights=None):
    """Feeds T new tokens (T >= 1; the prompt at once, then one at a time).

    loop_weights: decoding_weights(output_ids), prepared once before a decoding loop.

    Returns ({'logits': BxTxV float32, 'hidden': BxTxD, 'vad_pred': BxTx3}, new cache);
    equal to the full pass over the whole prefix (no padding inside the cache).
    The caller keeps index + T within the cache length given to init_cache (a
    traced index cannot be checked here).
    """
    c = self.config
    max_length = cache["decoder"][0]["kv"].shape[1]
    self._check_text(input_ids_BxT, segment_ids_BxT, token_vad_BxTx3, max_length)
    index = cache["index"]
    t = input_ids_BxT.shape[1]
    x_BxTxD = self.decoder.embed(input_ids_BxT, segment_ids_BxT, index + jnp.arange(t))
    new_cache = {"index": index + t}
    if c.use_vad_embedding:
      vad_BxTx3, new_cache["vad"] = self.vad_encoder.step(token_vad_BxTx3, cache["vad"], index)
      _, explanation_BxT = config_part_masks(segment_ids_BxT, c, index + jnp.arange(t))
      x_BxTxD = fuse_explanation_vad(
          x_BxTxD, vad_BxTx3, explanation_BxT, *self.vad_fusion(c.decoder.width + 3),
          embedding_kernel_DxD=(loop_weights or {}).get("vad_fusion_embedding"))
    mask_1xTxS = layers.cached_causal_mask(index, t, max_length)
    hidden_BxTxD, new_cache["decoder"] = self.decoder.transform(
        x_BxTxD, mask_1xTxS, cache=cache["decoder"], index=index)
    lm_table = None if loop_weights is None else loop_weights["lm_table"]
    out = {"logits": self.decoder.logits(hidden_BxTxD, output_ids, table_VxD=lm_table),
           "hidden": hidden_BxTxD,
           "vad_pred": self.vad_head(hidden_BxTxD.astype(jnp.float32))}
    return out, new_cache

  def decoding_weights(self, output_ids=None):
    """What decode_step reads every token, prepared once before a decoding loop (XLA does not
    move it out of the loop): in the compute dtype,
    - 'lm_table': the rows of the tied LM head (all, or output_ids), padded with zero rows to
      a multiple of 128 (aligned GEMMs; decode_step drops their columns). Left to XLA, the
      50,261-row table was padded to 50,264 rows for every token;
    - 'vad_fusion_embedding': the VAD fusion's rows for the embedding (a slice of its kernel
      taken in the loop is a copy per token; see fuse_explanation_vad).
    """
    c = self.config
    table_VxD = self.decoder.wte.embedding
    if output_ids is not None:
      table_VxD = table_VxD[output_ids]
    table_VxD = jnp.pad(table_VxD, ((0, -table_VxD.shape[0] % 128), (0, 0)))
    weights = {"lm_table": table_VxD.astype(c.compute_dtype)}
    if c.use_vad_embedding:
      kernel_IxD, _ = self.vad_fusion(c.decoder.width + 3)
      weights["vad_fusion_embedding"] = kernel_IxD[:c.decoder.width].astype(c.compute_dtype)
    return weights

  # --- initialisation ------------------------------------------------------------------

  def init_all(self, images_BxHxWx3, input_ids_BxL, segment_ids_BxL, token_vad_BxLx3,
               token_mask_BxL):
    """Touches every parameter: encode_image, __call__ and score."""
    patches_BxPxD = self.encode_image(images_BxHxWx3)
    out = self(patches_BxPxD, input_ids_BxL, segment_ids_BxL, token_vad_BxLx3, token_mask_BxL)
    return self.score(out["image_feat"], out["emotion_feat"], out["explanation_feat"])


def mean_cross_attention(intermediates, num_patches: int) -> jax.Array:
  """BxTxP: where each text position looks in the image's num_patches patches, from an apply
  with mutable=['intermediates'] (the decoder's cross-attention sows its BxHxTxP' weights there;
  a full pass pads P' beyond the patches (gpt2.pad_patches), with no weight, cut off here).

  The mean over heads, then over all decoder layers with equal weight: no layer is known to
  localise better than the others (distilgpt2's six all attend to the same patch tokens), and
  one map per position keeps what is saved and drawn small. Each row sums to 1.
  """
  flat = traverse_util.flatten_dict(dict(intermediates))
  maps = [probs[..., :num_patches].mean(axis=1) for path, sown in flat.items()
          if "cross_attention" in path for probs in sown]
  if not maps:
    raise ValueError("no cross-attention weights in these intermediates: apply with"
                     " mutable=['intermediates']")
  return sum(maps[1:], maps[0]) / len(maps)


def init_params(config, rng: jax.Array):
  """Randomly initialised parameters (float32) for a ModelConfig (or its dict form).

  Works under jax.eval_shape (shapes only) and jax.jit (config static).
  """
  config = ModelConfig.from_dict(config)
  s = config.vision.image_size
  images = jnp.zeros((1, s, s, 3), jnp.uint8)
  ids = jnp.zeros((1, 2), jnp.int32)
  segs = jnp.asarray([[config.emotion_segment_id, config.explanation_segment_id]], jnp.int32)
  variables = SEVLM(config).init({"params": rng}, images, ids, segs, jnp.zeros((1, 2, 3)),
                                 jnp.ones((1, 2), jnp.int32), method=SEVLM.init_all)
  params = variables["params"]
  if config.use_vad_embedding and config.vad.init == "public":  # the public layers start as copies
    params = dict(params, vad_encoder=copy_first_layer(params["vad_encoder"]))
  return params


def abstract_params(config) -> Any:
  """The parameters' shapes and dtypes (jax.ShapeDtypeStruct leaves) for a ModelConfig (or its
  dict form), with no memory used."""
  return jax.eval_shape(lambda rng: init_params(config, rng), jax.random.PRNGKey(0))
