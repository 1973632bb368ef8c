"""VAD encoder: a tiny transformer over per-token (valence, arousal, dominance) vectors.

Architecture as in the public SEVLM code: add learned positions, LayerNorm,
then layers of [attention (query/key/value projections, no output projection)
+ residual, LayerNorm, ReLU feed-forward + residual, LayerNorm],
each layer wrapped in one more residual connection (x <- x + layer(x)).

The public encoder is bidirectional, so during training a position sees the
VAD of later tokens, which do not exist yet at generation time. Here it is
causal by default (and then has an exact KV-cached incremental path);
`causal=False` restores the bidirectional behaviour.

`fuse_explanation_vad` appends the encoder output to the input embedding
of every explanation token (see models/segments.py) and projects back to
the decoder width; all other tokens keep their embedding.

`mask_padding=False` lets every query attend to padding keys too, as the
public encoder is given no mask.

`init='public'` starts the Dense layers as the public module does: PyTorch's nn.Linear
(weight kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias from the same
range; nothing re-initialises them, as the encoder is not part of GPT-2's module), and every
layer a copy of the first (its `_get_clones` deep-copies one layer; copy_first_layer, applied
by models/sevlm.init_params). Positions (N(0, 1)) and LayerNorms (1, 0) start alike in both.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from sevlm_jax.models.config import VADConfig
from sevlm_jax.models import decode_kernels
from sevlm_jax.models import layers
from sevlm_jax.models.layers import DenseParams


def small_dense(x_BxTxI: jax.Array, kernel_IxO: jax.Array, bias_O: jax.Array) -> jax.Array:
  """x @ kernel + bias as broadcast products and a sum, for this encoder's tiny matrices.

  At width 3 a GEMM launch costs far more than its arithmetic, and in the train step the
  encoder's matmuls were 54 cuBLAS calls (forward and backward); as elementwise work XLA
  fuses them with the layer norms, softmax and residuals around them. Same math as a matmul.
  """
  return jnp.sum(x_BxTxI[..., :, None] * kernel_IxO, axis=-2) + bias_O


def small_attention_probs(q_BxTxHxK, k_BxSxHxK, mask_BxTxS):
  """layers.attention_probs (BxHxTxS, float32) with the score products summed explicitly."""
  scale = q_BxTxHxK.shape[-1] ** -0.5
  q_BxHxTx1xK = jnp.swapaxes(q_BxTxHxK, 1, 2)[:, :, :, None]
  k_BxHx1xSxK = jnp.swapaxes(k_BxSxHxK, 1, 2)[:, :, None]
  logits_BxHxTxS = jnp.sum(q_BxHxTx1xK * k_BxHx1xSxK, axis=-1).astype(jnp.float32) * scale
  logits_BxHxTxS = jnp.where(mask_BxTxS[:, None], logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_BxHxTxS, axis=-1)


def small_attend(probs_BxHxTxS, v_BxSxHxK):
  """layers.attend (BxTxHxK) with the weighted sum over keys written out."""
  v_BxHx1xSxK = jnp.swapaxes(v_BxSxHxK, 1, 2)[:, :, None]
  out_BxHxTxK = jnp.sum(probs_BxHxTxS[..., None].astype(v_BxSxHxK.dtype) * v_BxHx1xSxK, axis=-2)
  return jnp.swapaxes(out_BxHxTxK, 1, 2)


def torch_linear_init(fan_in: int) -> dict:
  """kernel_init and bias_init of PyTorch's nn.Linear with fan_in inputs: both U(-b, b), b =
  1/sqrt(fan_in) (kaiming_uniform(a=sqrt(5)) gives the weight that bound)."""
  bound = fan_in ** -0.5

  def uniform(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return {"kernel_init": uniform, "bias_init": uniform}


def copy_first_layer(vad_params: dict) -> dict:
  """The encoder's parameters with every layer's replaced by a copy of layer 0's (init='public').
  Copies, not the same arrays: the train step donates its state, and one buffer cannot be
  donated twice."""
  copy = lambda: jax.tree.map(jnp.copy, vad_params["layers_0"])
  return {k: (copy() if k.startswith("layers_") and k != "layers_0" else v)
          for k, v in vad_params.items()}


class VADLayer(nn.Module):
  config: VADConfig

  def setup(self):
    c = self.config
    # Dense layers' parameters (names and init of nn.Dense, or of nn.Linear with init='public'),
    # applied by small_dense.
    init = torch_linear_init if c.init == "public" else (lambda _: {})
    self.query = DenseParams(c.width, **init(c.width))
    self.key = DenseParams(c.width, **init(c.width))
    self.value = DenseParams(c.width, **init(c.width))
    self.norm1 = layers.layer_norm()
    self.fc1 = DenseParams(c.mlp_dim, **init(c.width))
    self.fc2 = DenseParams(c.width, **init(c.mlp_dim))
    self.norm2 = layers.layer_norm()
    self.attn_dropout = nn.Dropout(c.dropout)
    self.dropout1 = nn.Dropout(c.dropout)
    self.dropout2 = nn.Dropout(c.dropout)

  def __call__(self, x_BxTx3, mask_BxTxS, cache=None, index=None, deterministic=True):
    h = self.config.heads
    dense = lambda layer, x: small_dense(x, *layer(x.shape[-1]))
    q = layers.split_heads(dense(self.query, x_BxTx3), h)
    k = layers.split_heads(dense(self.key, x_BxTx3), h)
    v = layers.split_heads(dense(self.value, x_BxTx3), h)
    if cache is not None:  # k and v of the new tokens written by one update
      kv = layers.update_cache(cache["kv"], jnp.stack([k, v], axis=2), index)
      k, v = kv[:, :, 0], kv[:, :, 1]
      cache = {"kv": kv}
    probs = self.attn_dropout(small_attention_probs(q, k, mask_BxTxS), deterministic=deterministic)
    a_BxTx3 = layers.merge_heads(small_attend(probs, v))
    y = self.norm1(x_BxTx3 + self.dropout1(a_BxTx3, deterministic=deterministic))
    f = dense(self.fc2, jax.nn.relu(dense(self.fc1, y)))
    y = self.norm2(y + self.dropout2(f, deterministic=deterministic))
    return y, cache


class VADEncoder(nn.Module):
  config: VADConfig
  decode_impl: str = "xla"  # a one-token step: 'pallas' one kernel (models/decode_kernels.py)

  def setup(self):
    c = self.config
    # nn.Embedding's default N(0, 1) init, as in the public code.
    self.position_embedding = self.param("position_embedding", nn.initializers.normal(1.0),
                                         (c.max_positions, c.width))
    self.norm = layers.layer_norm()
    self.layers = [VADLayer(c) for _ in range(c.layers)]

  def _check_length(self, length: int):
    if length > self.config.max_positions:
      raise ValueError(f"sequence length {length} exceeds model.vad.max_positions="
                       f"{self.config.max_positions}")

  def _run(self, vad_BxTx3, positions_T, mask_BxTxS, cache, index, deterministic):
    if vad_BxTx3.shape[-1] != self.config.width:
      raise ValueError(f"token VAD features must be BxLx{self.config.width}, got shape"
                       f" {tuple(vad_BxTx3.shape)}")
    x = vad_BxTx3.astype(jnp.float32) + jnp.take(self.position_embedding, positions_T, axis=0)[None]
    x = self.norm(x)
    new_cache = []
    for i, layer in enumerate(self.layers):
      y, layer_cache = layer(x, mask_BxTxS, None if cache is None else cache[i], index,
                             deterministic)
      x = x + y
      new_cache.append(layer_cache)
    return x, (tuple(new_cache) if cache is not None else None)

  def __call__(self, vad_BxLx3, token_mask_BxL, deterministic=True):
    """Full pass; padding keys (token_mask == 0) are attended to only with mask_padding=False."""
    l = vad_BxLx3.shape[1]
    self._check_length(l)
    if not self.config.mask_padding:
      token_mask_BxL = jnp.ones_like(token_mask_BxL)
    if self.config.causal:
      mask_BxLxL = layers.causal_mask(token_mask_BxL)
    else:
      mask_BxLxL = jnp.broadcast_to(token_mask_BxL.astype(bool)[:, None, :],
                                    (token_mask_BxL.shape[0], l, l))
    return self._run(vad_BxLx3, jnp.arange(l), mask_BxLxL, None, None, deterministic)[0]

  def init_cache(self, batch: int, max_length: int):
    c = self.config
    if not c.causal:
      raise ValueError("incremental VAD encoding needs model.vad.causal=True: a bidirectional"
                       " encoder changes earlier outputs as tokens arrive")
    self._check_length(max_length)
    zeros = jnp.zeros((batch, max_length, 2, c.heads, c.width // c.heads), jnp.float32)
    return tuple({"kv": zeros} for _ in range(c.layers))

  def step(self, vad_BxTx3, cache, index):
    """Encodes T new tokens at positions index..index+T-1 against the cache."""
    t = vad_BxTx3.shape[1]
    max_length = cache[0]["kv"].shape[1]
    mask_1xTxS = layers.cached_causal_mask(index, t, max_length)
    out = self._run(vad_BxTx3, index + jnp.arange(t), mask_1xTxS, cache, index, True)
    if t > 1 or self.config.heads > 1 or self.decode_impl == "xla":
      return out
    caches = decode_kernels.vad_step(vad_BxTx3, self.variables["params"],
                                     tuple(c["kv"] for c in cache), index, layers.LN_EPSILON,
                                     (out[0], tuple(c["kv"] for c in out[1])), self.decode_impl)
    return caches[0], tuple({"kv": kv} for kv in caches[1])


def fuse_explanation_vad(x_BxLxD: jax.Array, vad_BxLx3: jax.Array, explanation_BxL: jax.Array,
                         kernel_IxD: jax.Array, bias_D: jax.Array,
                         embedding_kernel_DxD: jax.Array | None = None) -> jax.Array:
  """Explanation tokens (explanation_BxL set): [embedding, vad] @ kernel + bias (D+3 -> D), in
  the embedding's dtype as nn.Dense computes it; every other token unchanged.

  embedding_kernel_DxD: kernel[:D] in that dtype, taken once before a decoding loop. The
  product is then embedding @ kernel[:D] + vad @ kernel[D:] + bias: the concatenation's
  D+3 = 771 rows made XLA pad both GEMM operands to 776 for every token (two kernels), where
  a 768-row GEMM is aligned and the 3-row product is elementwise work fused after it (from the
  same operands rounded to that dtype, added in float32).
  """
  dtype = x_BxLxD.dtype
  if embedding_kernel_DxD is None:
    fused_BxLxD = jnp.concatenate([x_BxLxD, vad_BxLx3.astype(dtype)], axis=-1) @ kernel_IxD.astype(
        dtype) + bias_D.astype(dtype)
  else:
    in_f32 = lambda a: a.astype(dtype).astype(jnp.float32)
    fused_BxLxD = (x_BxLxD @ embedding_kernel_DxD.astype(dtype)).astype(jnp.float32) + small_dense(
        in_f32(vad_BxLx3), in_f32(kernel_IxD[x_BxLxD.shape[-1]:]), in_f32(bias_D))
  is_expl_BxLx1 = explanation_BxL.astype(bool)[..., None]
  return jnp.where(is_expl_BxLx1, fused_BxLxD.astype(dtype), x_BxLxD)
