"""How near decoding comes to the machine's limit: the model's FLOPs per image and the
measured speed of a matrix product of the model's own shapes, in the same run.

The FLOPs count the matrix products only (2 per multiply-add), as the model runs them for a
greedy decode of new_tokens after a prompt of prompt_len tokens: the vision tower (patch
embedding, 12 layers over the patches and class token), the image's cross-attention K/V once,
then one decoder pass per fed position (the prompt's, then each new token but the last) and
the tied LM head where a token is chosen. LayerNorms, softmaxes and the VAD encoder
(width 3) are left out: they are under 1% of it.

The peak is the best of a few timed products of the tower's MLP GEMM (images * (patches + 1)
rows, width -> mlp_dim), made the way the model makes it (models/layers.py), in bf16 and in
float32. The share of it a decode reaches says how much of its time goes elsewhere (memory
traffic of the token-by-token loop, elementwise work, the loop's own overhead).
"""

import time

import jax
import jax.numpy as jnp

from sevlm_jax.models import layers
from sevlm_jax.models.config import ModelConfig


def tower_flops(c: ModelConfig) -> int:
  """Matrix-product FLOPs of the vision tower for one image."""
  v = c.vision
  n, d = v.num_patches + 1, v.width
  layer = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * v.mlp_dim
  return 2 * v.num_patches * v.patch_size ** 2 * 3 * d + v.layers * layer


def decoder_flops(c: ModelConfig, prompt_len: int, new_tokens: int) -> int:
  """Matrix-product FLOPs of decoding one image: cross-attention K/V once, a pass per fed
  position (self-attention over the positions so far), the LM head per chosen token."""
  dc, p = c.decoder, c.vision.num_patches
  d = dc.width
  cross_kv = dc.layers * 2 * p * d * 2 * d
  fed = prompt_len + new_tokens - 1
  per_position = 2 * d * 3 * d + 3 * 2 * d * d + 2 * 2 * d * dc.mlp_dim + 2 * 2 * p * d
  self_attention = sum(2 * 2 * (s + 1) * d for s in range(fed))  # position s sees s + 1 keys
  lm_head = new_tokens * 2 * d * dc.vocab_size
  return cross_kv + dc.layers * (fed * per_position + self_attention) + lm_head


def decode_flops_per_image(c: ModelConfig, prompt_len: int, new_tokens: int) -> dict:
  tower, decoder = tower_flops(c), decoder_flops(c, prompt_len, new_tokens)
  return {"tower": tower, "decoder": decoder, "total": tower + decoder}


def matmul_gflops(rows: int, inner: int, cols: int, dtype, reps: int = 5) -> float:
  """Best GFLOP/s of a rows x inner x cols product in dtype over reps timed runs."""
  keys = jax.random.split(jax.random.key(0))
  lhs = jax.random.normal(keys[0], (rows, inner), dtype)
  rhs = jax.random.normal(keys[1], (inner, cols), dtype)
  product = jax.jit(lambda a, b: layers.dot_general(a, b, (((1,), (0,)), ((), ()))))
  jax.block_until_ready(product(lhs, rhs))
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(product(lhs, rhs))
    best = min(best, time.perf_counter() - start)
  return 2 * rows * inner * cols / best / 1e9


def matmul_peak(c: ModelConfig, images: int) -> dict:
  """{'shape': [m, k, n], 'bfloat16': GFLOP/s, 'float32': GFLOP/s, 'peak': the better}: the
  tower's MLP GEMM for `images` images."""
  shape = (images * (c.vision.num_patches + 1), c.vision.width, c.vision.mlp_dim)
  rates = {name: round(matmul_gflops(*shape, jnp.dtype(name)), 1)
           for name in ("bfloat16", "float32")}
  return {"shape": list(shape), **rates, "peak": max(rates.values())}


def _best_seconds(run, reps: int = 3) -> float:
  jax.block_until_ready(run())
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(run())
    best = min(best, time.perf_counter() - start)
  return best


def phase_ms(model, cast, images, new_tokens: int) -> dict:
  """Where a decode's time goes: the vision tower over the images alone, and the LM head's
  products and argmaxes for new_tokens tokens (one row per image each), timed on their own;
  `cast`: the parameters as the decode reads them (inference/decode.cast_for_decoding). The
  rest of a decode is the decoder's token-by-token loop."""
  c = model.config
  tower = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
  table = jax.jit(lambda p: model.apply({"params": p}, method="decoding_weights")["lm_table"])
  table_VxD = table(cast)
  hidden_Bx1xD = jnp.ones((images.shape[0], 1, c.decoder.width), c.compute_dtype)

  @jax.jit
  def head(h_Bx1xD, table_VxD):
    """new_tokens products and argmaxes in a loop, as decoding runs them: XLA lays the table
    out for the product once, before the loop (a product on its own would pay that per call)."""
    def body(i, total):
      logits_Bx1xV = layers.einsum("btd,vd->btv", h_Bx1xD + i.astype(h_Bx1xD.dtype), table_VxD,
                                   jnp.float32)
      return total + jnp.argmax(logits_Bx1xV, axis=-1).sum()
    return jax.lax.fori_loop(0, new_tokens, body, jnp.int32(0))

  return {"tower_ms": round(_best_seconds(lambda: tower(cast, images)) * 1e3, 1),
          "lm_head_ms": round(_best_seconds(lambda: head(hidden_Bx1xD, table_VxD)) * 1e3, 1)}


def share_fields(images_per_s: float, flops_per_image: int, peak: dict) -> dict:
  """The decode's achieved GFLOP/s and its share of the measured peak."""
  achieved = images_per_s * flops_per_image / 1e9
  return {"achieved_GFLOP_per_s": round(achieved, 1),
          "share_of_matmul_peak": round(achieved / peak["peak"], 3)}
