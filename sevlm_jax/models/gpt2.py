"""GPT-2 decoder with cross-attention to image patches, and its KV cache.

Parameter layout follows Hugging Face's GPT2LMHeadModel with
add_cross_attention=True, so pretrained weights map one to one: per block
ln_1, attn.c_attn (q|k|v), attn.c_proj, ln_cross_attn, crossattention.q_attn,
crossattention.c_attn (k|v), crossattention.c_proj, ln_2, mlp.c_fc, mlp.c_proj;
then ln_f. Conv1D weights are (in, out), which is a Dense kernel as is. The LM
head is tied to the word table `wte`.

Segment ids are embedded with the word table and added (HF's token_type_ids).

The decoder is split into `embed` / `transform` / `logits` so that SEVLM can
fuse VAD features into the input embeddings between the first two. The cache
is an explicit pytree (a tuple with one dict per block): a self-attention K/V
buffer of a fixed maximum length (K and V in one array, written by one update
per step), and the cross-attention K/V, computed once per image by `init_cache`.

Where the text looks: applied with mutable=['intermediates'], each block's cross-attention sows
its weights (NxHxTxP, one row per text sequence) as 'cross_attention'; otherwise the sow is
skipped and the computation is unchanged (sevlm.mean_cross_attention reads them).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sevlm_jax.models import decode_kernels
from sevlm_jax.models import layers
from sevlm_jax.models.config import DecoderConfig
from sevlm_jax.models.layers import (attend, attention_probs, layer_norm, merge_heads,
                                     split_heads, update_cache)

def _dense(features: int, dtype, std: float = 0.02) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(std),
                  dot_general=layers.dot_general)


def pad_patches(patches_BxPxD, multiple: int = 8):
  """Patches padded with zero rows to a multiple of 8 (196 -> 200), and the key mask P.

  The padding patches are masked out of cross-attention, so its output and gradients are
  those of the real patches; but the key axis of the cross-attention GEMMs is then aligned,
  where XLA padded 196 -> 200 for the tensor cores in 5 extra kernels per layer (train step,
  bf16, on an H200: 30 per step).
  """
  p = patches_BxPxD.shape[1]
  extra = -p % multiple
  if not extra:
    return patches_BxPxD, None
  return (jnp.pad(patches_BxPxD, ((0, 0), (0, extra), (0, 0))),
          jnp.arange(p + extra) < p)


class SelfAttention(nn.Module):
  config: DecoderConfig
  dtype: Any = jnp.float32
  decode_impl: str = "xla"  # a decoding step's attention (models/decode_kernels.py)

  def setup(self):
    c = self.config
    self.c_attn = _dense(3 * c.width, self.dtype)
    # GPT-2 scales residual projections by 1/sqrt(2 * layers) at init.
    self.c_proj = _dense(c.width, self.dtype, 0.02 / (2 * c.layers) ** 0.5)
    self.attn_dropout = nn.Dropout(c.dropout)
    self.resid_dropout = nn.Dropout(c.dropout)

  def __call__(self, x_BxTxD, mask_BxTxS, cache=None, index=None, deterministic=True):
    qkv_BxTx3D = self.c_attn(x_BxTxD)
    h = self.config.heads
    b, t, d3 = qkv_BxTx3D.shape
    if cache is not None and t == 1 and deterministic:  # a decoding step: one kernel
      out_BxHxK, kv = decode_kernels.self_attention_step(
          qkv_BxTx3D.reshape(b, 3, h, -1), cache["kv"], index, self.decode_impl)
      return self.c_proj(out_BxHxK.reshape(b, 1, d3 // 3)), {**cache, "kv": kv}
    q_BxTxD, k_BxTxD, v_BxTxD = jnp.split(qkv_BxTx3D, 3, axis=-1)
    q, k, v = split_heads(q_BxTxD, h), split_heads(k_BxTxD, h), split_heads(v_BxTxD, h)
    if cache is not None:  # k and v of the new tokens written by one update
      kv = update_cache(cache["kv"], qkv_BxTx3D[..., q_BxTxD.shape[-1]:].reshape(
          b, t, 2, h, -1), index)
      k, v = kv[:, :, 0], kv[:, :, 1]
      cache = {**cache, "kv": kv}
    probs = self.attn_dropout(attention_probs(q, k, mask_BxTxS), deterministic=deterministic)
    out_BxTxD = self.c_proj(merge_heads(attend(probs, v)))
    return self.resid_dropout(out_BxTxD, deterministic=deterministic), cache


class CrossAttention(nn.Module):
  """Queries from the text, keys/values from the image patches (no mask: all patches are real)."""
  config: DecoderConfig
  dtype: Any = jnp.float32
  decode_impl: str = "xla"  # a decoding step's attention (models/decode_kernels.py)

  def setup(self):
    c = self.config
    self.q_attn = _dense(c.width, self.dtype)
    self.c_attn = _dense(2 * c.width, self.dtype)
    self.c_proj = _dense(c.width, self.dtype, 0.02 / (2 * c.layers) ** 0.5)
    self.attn_dropout = nn.Dropout(c.dropout)
    self.resid_dropout = nn.Dropout(c.dropout)

  def kv(self, patches_BxPxD):
    k_BxPxD, v_BxPxD = jnp.split(self.c_attn(patches_BxPxD.astype(self.dtype)), 2, axis=-1)
    return split_heads(k_BxPxD, self.config.heads), split_heads(v_BxPxD, self.config.heads)

  def __call__(self, x_NxTxD, k_BxPxHxK, v_BxPxHxK, deterministic=True, key_mask_P=None):
    """N text sequences over B images, N = G * B: sequences G*b .. G*b+G-1 read image b.

    With no mask, the G sequences of one image are one longer query block against
    the same keys, so each image's K/V are projected and read once, not G times.
    key_mask_P: False on padding patches (pad_patches), which then get no weight.
    """
    n, t, d = x_NxTxD.shape
    b = k_BxPxHxK.shape[0]
    if n % b:
      raise ValueError(f"{n} text sequences cannot share {b} images evenly")
    q_BxGTxHxK = split_heads(self.q_attn(x_NxTxD).reshape(b, (n // b) * t, d), self.config.heads)
    sowing = self.is_mutable_collection("intermediates")
    if n == b and t == 1 and key_mask_P is None and deterministic and not sowing:  # decoding
      out_BxHxK = decode_kernels.cross_attention_step(q_BxGTxHxK[:, 0], k_BxPxHxK, v_BxPxHxK,
                                                        self.decode_impl)
      return self.c_proj(out_BxHxK.reshape(b, 1, d))
    mask_1x1xP = None if key_mask_P is None else key_mask_P[None, None]
    probs = self.attn_dropout(attention_probs(q_BxGTxHxK, k_BxPxHxK, mask_1x1xP),
                              deterministic=deterministic)
    if sowing:  # asked for (where the text looks); else no-op
      h, p = probs.shape[1], probs.shape[-1]
      self.sow("intermediates", "cross_attention", probs.reshape(b, h, n // b, t, p).transpose(
          0, 2, 1, 3, 4).reshape(n, h, t, p))
    out_BxGTxD = self.c_proj(merge_heads(attend(probs, v_BxPxHxK)))
    return self.resid_dropout(out_BxGTxD.reshape(n, t, d), deterministic=deterministic)


class MLP(nn.Module):
  config: DecoderConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.c_fc = _dense(c.mlp_dim, self.dtype)
    self.c_proj = _dense(c.width, self.dtype, 0.02 / (2 * c.layers) ** 0.5)
    self.dropout = nn.Dropout(c.dropout)

  def __call__(self, x_BxTxD, deterministic=True):
    h_BxTxF = jax.nn.gelu(self.c_fc(x_BxTxD), approximate=True)  # GPT-2's "gelu_new"
    return self.dropout(self.c_proj(h_BxTxF), deterministic=deterministic)


class Block(nn.Module):
  config: DecoderConfig
  dtype: Any = jnp.float32
  decode_impl: str = "xla"

  def setup(self):
    self.ln_1 = layer_norm(dtype=self.dtype)
    self.attn = SelfAttention(self.config, self.dtype, self.decode_impl)
    self.ln_cross_attn = layer_norm(dtype=self.dtype)
    self.crossattention = CrossAttention(self.config, self.dtype, self.decode_impl)
    self.ln_2 = layer_norm(dtype=self.dtype)
    self.mlp = MLP(self.config, self.dtype)

  def cross_kv(self, patches_BxPxD):
    return self.crossattention.kv(patches_BxPxD)

  def __call__(self, x_BxTxD, mask_BxTxS, cross_k, cross_v, cache=None, index=None,
               deterministic=True, cross_key_mask_P=None):
    a_BxTxD, cache = self.attn(self.ln_1(x_BxTxD), mask_BxTxS, cache, index, deterministic)
    x_BxTxD = x_BxTxD + a_BxTxD
    x_BxTxD = x_BxTxD + self.crossattention(self.ln_cross_attn(x_BxTxD), cross_k, cross_v,
                                            deterministic, cross_key_mask_P)
    x_BxTxD = x_BxTxD + self.mlp(self.ln_2(x_BxTxD), deterministic)
    return x_BxTxD, cache


class GPT2Decoder(nn.Module):
  config: DecoderConfig
  dtype: Any = jnp.float32
  # A decoding step's attention: model.decode_kernels (see models/decode_kernels.py).
  decode_impl: str = "xla"

  def setup(self):
    c = self.config
    self.wte = nn.Embed(c.vocab_size, c.width, embedding_init=nn.initializers.normal(0.02),
                        dtype=self.dtype)
    self.wpe = nn.Embed(c.max_positions, c.width, embedding_init=nn.initializers.normal(0.02),
                        dtype=self.dtype)
    self.drop = nn.Dropout(c.dropout)
    self.h = [Block(c, self.dtype, self.decode_impl) for _ in range(c.layers)]
    self.ln_f = layer_norm(dtype=self.dtype)

  def embed(self, input_ids_BxT, segment_ids_BxT, positions_T, deterministic=True):
    """word + position + segment embeddings (segment ids share the word table), then dropout.

    Rows are gathered from the float32 tables and cast afterwards. The gradient of a gather
    is a scatter-add into the table; in bf16 that scatter is emulated with compare-and-swap
    loops, and with every segment id landing on the same two rows it took 70% of a bf16
    train step on an H200. In float32 it uses native atomic adds.
    """
    wte_VxD = self.wte.embedding
    x_BxTxD = jnp.take(wte_VxD, input_ids_BxT, axis=0) + jnp.take(
        self.wpe.embedding, positions_T, axis=0)[None]
    x_BxTxD = (x_BxTxD + jnp.take(wte_VxD, segment_ids_BxT, axis=0)).astype(self.dtype)
    return self.drop(x_BxTxD, deterministic=deterministic)

  def transform(self, x_BxTxD, mask_BxTxS, patches_BxPxD=None, cache=None, index=None,
                deterministic=True):
    """Runs the blocks and ln_f. Cross K/V come from the cache when given, else from the patches."""
    new_cache = []
    key_mask_P = None
    if cache is None:  # aligned cross-attention GEMMs (pad_patches); decoding has none
      patches_BxPxD, key_mask_P = pad_patches(patches_BxPxD)
    for i, block in enumerate(self.h):
      if cache is not None:
        layer_cache = cache[i]
        cross_k, cross_v = layer_cache["cross_k"], layer_cache["cross_v"]
      else:
        layer_cache = None
        cross_k, cross_v = block.cross_kv(patches_BxPxD)
      x_BxTxD, layer_cache = block(x_BxTxD, mask_BxTxS, cross_k, cross_v, layer_cache, index,
                                   deterministic, key_mask_P)
      new_cache.append(layer_cache)
    return self.ln_f(x_BxTxD), (tuple(new_cache) if cache is not None else None)

  def logits(self, hidden_BxTxD, output_ids_V=None, dtype=jnp.float32, pad_vocab_to: int = 1,
             table_VxD=None):
    """Tied LM head; over the rows output_ids_V only when given (a restricted output
    vocabulary: the softmax then normalises over those tokens).

    table_VxD: those rows already taken, cast to the compute dtype and padded ('lm_table' of
    SEVLM.decoding_weights), so that a decoding loop does not gather, cast and pad the
    50,261 x 768 table for every token; the logits of its padding rows are dropped.

    dtype: of the returned logits. The train step asks for the compute dtype, so that in
    bf16 no float32 copy of the BxTxV logits is written; the loss upcasts inside its
    reductions.
    pad_vocab_to: > 1 pads the vocabulary (50,261) up to a multiple of it with columns
    fixed at the lowest finite value, which no softmax, argmax or label ever picks. Rows
    of an odd length force the matrix units onto slow unaligned kernels (seen on an H200:
    a 50,261-wide bf16 GEMM ran on an 'align1' kernel at about 100 TFLOP/s).
    """
    v = self.config.vocab_size
    if table_VxD is not None:
      rows = v if output_ids_V is None else output_ids_V.shape[0]
      return layers.einsum("btd,vd->btv", hidden_BxTxD.astype(self.dtype),
                           table_VxD.astype(self.dtype), dtype)[..., :rows]
    if output_ids_V is not None:
      table_VxD = self.wte.embedding[output_ids_V]
    else:
      table_VxD = jnp.pad(self.wte.embedding, ((0, -v % max(pad_vocab_to, 1)), (0, 0)))
    logits_BxTxV = layers.einsum("btd,vd->btv", hidden_BxTxD.astype(self.dtype),
                                 table_VxD.astype(self.dtype), dtype)
    if output_ids_V is None and table_VxD.shape[0] > v:  # the padding columns
      logits_BxTxV = jnp.where(jnp.arange(table_VxD.shape[0]) < v, logits_BxTxV,
                               jnp.finfo(dtype).min)
    return logits_BxTxV

  def init_cache(self, patches_BxPxD, max_length: int):
    """Empty self-attention buffers of max_length slots plus the image's cross-attention K/V."""
    c = self.config
    b = patches_BxPxD.shape[0]
    zeros = jnp.zeros((b, max_length, 2, c.heads, c.width // c.heads), self.dtype)
    cache = []
    for block in self.h:
      cross_k, cross_v = block.cross_kv(patches_BxPxD)
      cache.append({"kv": zeros, "cross_k": cross_k, "cross_v": cross_v})
    return tuple(cache)
