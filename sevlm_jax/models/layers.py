"""Building blocks shared by the towers: the matrix products (below), Dense parameters applied
by hand, LayerNorm as GPT-2 and CLIP define it, multi-head attention in pieces (heads, weights,
masks) and the fixed-size KV cache update.

The products (dot_general, einsum, conv_general_dilated) of bf16 operands ask XLA for a float32
result on a CPU: XLA's CPU backend (jaxlib 0.10.2) hands a bf16 x bf16 -> float32 product to its
YNNPACK kernels, which use the avx512_bf16 units where the CPU has them, while a bf16 x bf16 ->
bf16 product falls back to a slow generic path. On a 2-core AMD EPYC the tower's 1576x768x3072
GEMM ran about 2x faster, and the LM head's 8x768x50304 one 14x faster, with a float32 result
then cast back to bf16 (README, "Decoding on a CPU"). Rounding once from float32 is what a GPU's bf16 GEMM does too (float32 accumulation), so the values stay within bf16's
rounding of the other backends'.

The choice is made per platform when the program is lowered (jax.lax.platform_dependent), not
when it is traced: a program traced on a CPU host but compiled for a GPU (benchmark --aot) gets
the plain product, and XLA folds the platform switch away, so GPU programs are unchanged.
Float32 operands are multiplied as before everywhere.
"""

from typing import Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


def _per_platform(product: Callable[..., jax.Array], lhs, rhs, out_dtype) -> jax.Array:
  """product(lhs, rhs, preferred_element_type) cast to out_dtype; float32 inside on a CPU."""
  plain = lambda a, b: product(a, b, None).astype(out_dtype)
  if jnp.result_type(lhs, rhs) != jnp.bfloat16:
    return plain(lhs, rhs)
  on_cpu = lambda a, b: product(a, b, jnp.float32).astype(out_dtype)
  return lax.platform_dependent(lhs, rhs, cpu=on_cpu, default=plain)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """lax.dot_general (the signature flax's Dense calls), a float32 product of bf16 operands on a
  CPU. Pass as nn.Dense(..., dot_general=dot_general)."""
  out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
  product = lambda a, b, pet: lax.dot_general(a, b, dimension_numbers, precision=precision,
                                              preferred_element_type=pet or preferred_element_type)
  return _per_platform(product, lhs, rhs, out_dtype)


def einsum(spec: str, lhs, rhs, out_dtype=None) -> jax.Array:
  """jnp.einsum(spec, lhs, rhs).astype(out_dtype) (default: the operands' type), a float32
  product of bf16 operands on a CPU."""
  out_dtype = out_dtype or jnp.result_type(lhs, rhs)
  product = lambda a, b, pet: jnp.einsum(spec, a, b, preferred_element_type=pet)
  return _per_platform(product, lhs, rhs, out_dtype)


def conv_general_dilated(lhs, rhs, *args, preferred_element_type=None, **kwargs):
  """lax.conv_general_dilated (the signature flax's Conv calls), a float32 product of bf16
  operands on a CPU. Pass as nn.Conv(..., conv_general_dilated=conv_general_dilated)."""
  out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
  product = lambda a, b, pet: lax.conv_general_dilated(
      a, b, *args, preferred_element_type=pet or preferred_element_type, **kwargs)
  return _per_platform(product, lhs, rhs, out_dtype)


def masked_mean(x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """Mean over axis 1 of the positions where mask is set: BxD (float32); zeros for an all-masked
  row (no NaN, finite gradients). The contrastive head's pooling; the losses re-export it."""
  weights_BxL = mask_BxL.astype(jnp.float32)
  kept_BxLxD = jnp.where(mask_BxL[..., None].astype(bool),
                         x_BxLxD.astype(jnp.float32) * weights_BxL[..., None], 0.0)
  count_Bx1 = jnp.sum(weights_BxL, axis=1, keepdims=True)
  return jnp.sum(kept_BxLxD, axis=1) / jnp.where(count_Bx1 > 0, count_Bx1, 1.0)


class DenseParams(nn.Module):
  """The kernel and bias of a Dense layer (same names and init as nn.Dense), not applied."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", self.kernel_init, (in_features, self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    return kernel, bias


LN_EPSILON = 1e-5  # GPT-2's and CLIP's LayerNorm epsilon (flax defaults to 1e-6)


def layer_norm(name: str | None = None, dtype=jnp.float32) -> nn.LayerNorm:
  # use_fast_variance=False: E[(x-mean)^2], as PyTorch computes it.
  return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, dtype=dtype, name=name)


def split_heads(x_BxLxD: jax.Array, heads: int) -> jax.Array:
  b, l, d = x_BxLxD.shape
  return x_BxLxD.reshape(b, l, heads, d // heads)


def merge_heads(x_BxLxHxK: jax.Array) -> jax.Array:
  b, l, h, k = x_BxLxHxK.shape
  return x_BxLxHxK.reshape(b, l, h * k)


@jax.custom_jvp
def softmax_one_pass(logits: jax.Array) -> jax.Array:
  """softmax over the last axis, its max and its sum of exponentials found by one reduction.

  A variadic reduction carries (running max m, sum l of exp(x - m)) and merges two partial
  results by rescaling each sum to the larger max, so XLA emits one reduction kernel where
  jax.nn.softmax over a long axis takes two (the max, then the sum). JAX cannot
  differentiate a custom reduction, so the derivative is softmax's, given below.
  """
  lowest = jnp.finfo(logits.dtype).min  # finite: merging two empty partials gives exp(0) * 0

  def merge(a, b):
    (m_a, l_a), (m_b, l_b) = a, b
    m = jnp.maximum(m_a, m_b)
    return m, l_a * jnp.exp(m_a - m) + l_b * jnp.exp(m_b - m)

  m, l = jax.lax.reduce((logits, jnp.ones_like(logits)), (lowest, jnp.zeros((), logits.dtype)),
                        merge, (logits.ndim - 1,))
  return jnp.exp(logits - m[..., None]) / l[..., None]


@softmax_one_pass.defjvp
def _softmax_one_pass_jvp(primals, tangents):
  (logits,), (dlogits,) = primals, tangents
  probs = softmax_one_pass(logits)
  return probs, probs * (dlogits - jnp.sum(probs * dlogits, axis=-1, keepdims=True))


def attention_probs(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array,
                    mask_BxTxS: jax.Array | None) -> jax.Array:
  """Softmax attention weights BxHxTxS, computed in float32, scaled by 1/sqrt(K).

  One query per sequence (T=1: a decoding step) uses softmax_one_pass: over the 196 image
  patches of cross-attention, one kernel fewer per layer and token.
  """
  scale = q_BxTxHxK.shape[-1] ** -0.5
  logits_BxHxTxS = einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, jnp.float32) * scale
  if mask_BxTxS is not None:
    logits_BxHxTxS = jnp.where(mask_BxTxS[:, None], logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  if q_BxTxHxK.shape[1] == 1:
    return softmax_one_pass(logits_BxHxTxS)
  return jax.nn.softmax(logits_BxHxTxS, axis=-1)


def attend(probs_BxHxTxS: jax.Array, v_BxSxHxK: jax.Array) -> jax.Array:
  return einsum("bhts,bshk->bthk", probs_BxHxTxS.astype(v_BxSxHxK.dtype), v_BxSxHxK)


def causal_mask(token_mask_BxL: jax.Array) -> jax.Array:
  """BxLxL: query t sees keys s <= t that are real tokens."""
  l = token_mask_BxL.shape[1]
  causal_LxL = jnp.tril(jnp.ones((l, l), dtype=bool))
  return causal_LxL[None] & token_mask_BxL.astype(bool)[:, None, :]


def cached_causal_mask(index: jax.Array, num_new: int, max_length: int) -> jax.Array:
  """1xTxS for queries at positions index..index+T-1 over a cache of S slots."""
  query_T = index + jnp.arange(num_new)
  key_S = jnp.arange(max_length)
  return (key_S[None, :] <= query_T[:, None])[None]


def update_cache(buf: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """Writes T new tokens (new: BxTx...) at slots index.. of a cache buffer (BxSx...)."""
  start = (0, index) + (0,) * (buf.ndim - 2)
  return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), start)
