"""A decoding step in few GPU kernels: each attention sub-layer in one, the VAD encoder in one.

XLA compiles single-query attention into four kernels per sub-layer (the scores, the
softmax's max and sum, the normalised weights, the weighted sum of values), and the write of
the step's key and value into the self-attention cache into a fifth: 9 of the 18 launches of a
decoder layer per token. Here one Pallas (Triton) kernel per sub-layer runs a program per
(sequence, head) that walks the keys in blocks with an online softmax (running max m, sum l
of exp(score - m), and the weighted sum of values rescaled as m grows), so scores and weights
never leave the chip. The self-attention kernel also writes the step's key and value into the
cache slot `index` in place (the cache is an aliased operand); it reads only the slots before
it, and takes the new key and value from its operands, so no program reads what another writes.
The VAD encoder (3 wide, one head) was 9 kernels per token, 3 per layer; here one program per
sequence runs all its layers, writing each layer's cache slot the same way.

Scores, softmax and sums are float32 whatever the compute dtype (the XLA path rounds scores
and weights to the compute dtype); in float32 both paths agree to rounding (tested, through
Pallas's interpreter: there is no GPU in the tests).

`impl` (model.decode_kernels) chooses: 'xla' the einsum path (layers.attention_probs /
attend, the VAD encoder's own step; the default); 'pallas' the kernels where the program is
lowered for an NVIDIA GPU of sm_80 or later and the XLA path elsewhere (chosen at lowering,
so a program compiled for a GPU from a CPU-only machine gets the kernels); 'pallas_interpret'
the kernels through Pallas's interpreter on any device (slow: for checking them where there is
no GPU). With the batch split over several GPUs, each runs the kernels on its own rows
(_split_by_rows).
"""

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from sevlm_jax.models import layers

BLOCK_KEYS = 64  # keys per step of a program's loop (a power of two, as Triton tiles are)
_LOWEST = float(jnp.finfo(jnp.float32).min)


def _online_softmax_step(q_K, k_SxK, v_SxK, valid_S, carry, scale):
  """Folds one block of keys into (max m, sum l, unnormalised output acc_K)."""
  m, l, acc_K = carry
  s_S = jnp.sum(k_SxK.astype(jnp.float32) * q_K[None, :], axis=1) * scale
  s_S = jnp.where(valid_S, s_S, _LOWEST)
  m_new = jnp.maximum(m, jnp.max(s_S))
  rescale = jnp.exp(m - m_new)
  p_S = jnp.where(valid_S, jnp.exp(s_S - m_new), 0.0)
  l = l * rescale + jnp.sum(p_S)
  acc_K = acc_K * rescale + jnp.sum(p_S[:, None] * v_SxK.astype(jnp.float32), axis=0)
  return m_new, l, acc_K


def _attend_blocks(q_K, load_block, num_keys, carry, scale):
  """Folds keys 0..num_keys-1, BLOCK_KEYS at a time; load_block(start, valid_S) -> (k, v)."""
  def body(j, carry):
    start = j * BLOCK_KEYS
    valid_S = start + jnp.arange(BLOCK_KEYS) < num_keys
    k_SxK, v_SxK = load_block(start, valid_S)
    return _online_softmax_step(q_K, k_SxK, v_SxK, valid_S, carry, scale)
  return jax.lax.fori_loop(0, pl.cdiv(num_keys, BLOCK_KEYS), body, carry)


def _slot(index_ref, cache_ref):
  """The cache slot of the step: the index, clamped into the cache as XLA's update of it is (the
  kernels compute addresses from it: past the end they would write into the next row)."""
  return jnp.minimum(index_ref[0], cache_ref.shape[1] - 1)


def _empty(head_dim):
  return jnp.float32(_LOWEST), jnp.float32(0.0), jnp.zeros((head_dim,), jnp.float32)


# --- cross-attention: the image's keys and values, fixed during decoding -----------------------


def _cross_kernel(q_ref, k_ref, v_ref, o_ref, *, num_keys, scale):
  b, h = pl.program_id(0), pl.program_id(1)
  q_K = q_ref[b, h, :].astype(jnp.float32)

  def load_block(start, valid_S):
    rows = pl.ds(start, BLOCK_KEYS)
    k = plgpu.load(k_ref.at[b, rows, h, :], mask=valid_S[:, None], other=0.0)
    v = plgpu.load(v_ref.at[b, rows, h, :], mask=valid_S[:, None], other=0.0)
    return k, v

  _, l, acc_K = _attend_blocks(q_K, load_block, num_keys, _empty(q_K.shape[0]), scale)
  o_ref[b, h, :] = (acc_K / l).astype(o_ref.dtype)


def cross_attention_kernel(q_BxHxK, k_BxPxHxK, v_BxPxHxK, interpret=False):
  """softmax(q k^T / sqrt(K)) v over all P keys of each sequence's image: BxHxK."""
  b, h, d = q_BxHxK.shape
  kernel = functools.partial(_cross_kernel, num_keys=k_BxPxHxK.shape[1], scale=d ** -0.5)
  return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(q_BxHxK.shape, q_BxHxK.dtype),
                        grid=(b, h), interpret=interpret,
                        compiler_params=plgpu.CompilerParams(num_warps=2, num_stages=1),
                        )(q_BxHxK, k_BxPxHxK, v_BxPxHxK)


# --- self-attention over the KV cache, writing the step's key and value ---------------------


def _self_kernel(index_ref, qkv_ref, cache_ref, o_ref, cache_out_ref, *, scale):
  # cache_out_ref is cache_ref's buffer (aliased): read from one, written through the other.
  b, h = pl.program_id(0), pl.program_id(1)
  # Indices on the q|k|v axis and on the cache's K|V axis, traced: a literal index breaks
  # Pallas's interpreter on masked loads.
  i_q, i_k, i_v = jnp.int32(0), jnp.int32(1), jnp.int32(2)
  cache_k, cache_v = jnp.int32(0), jnp.int32(1)
  index = _slot(index_ref, cache_ref)
  q_K = qkv_ref[b, i_q, h, :].astype(jnp.float32)
  k_new_K, v_new_K = qkv_ref[b, i_k, h, :], qkv_ref[b, i_v, h, :]
  # The new key opens the fold: its weight is exp(0) = 1 at the running max.
  s_new = jnp.sum(k_new_K.astype(jnp.float32) * q_K) * scale
  carry = (s_new, jnp.float32(1.0), v_new_K.astype(jnp.float32))

  def load_block(start, valid_S):
    rows = pl.ds(start, BLOCK_KEYS)
    k = plgpu.load(cache_ref.at[b, rows, cache_k, h, :], mask=valid_S[:, None], other=0.0)
    v = plgpu.load(cache_ref.at[b, rows, cache_v, h, :], mask=valid_S[:, None], other=0.0)
    return k, v

  _, l, acc_K = _attend_blocks(q_K, load_block, index, carry, scale)
  o_ref[b, h, :] = (acc_K / l).astype(o_ref.dtype)
  cache_out_ref[b, index, cache_k, h, :] = k_new_K.astype(cache_out_ref.dtype)
  cache_out_ref[b, index, cache_v, h, :] = v_new_K.astype(cache_out_ref.dtype)


def self_attention_kernel(qkv_Bx3xHxK, cache_BxSx2xHxK, index, interpret=False):
  """Attention of each sequence's query over cache slots 0..index-1 and its own key, and the
  cache with the new key and value in slot `index`: (BxHxK, BxSx2xHxK).

  qkv: the step's query, key and value as the q|k|v projection lays them out (no slicing
  copies before the kernel).
  """
  b, _, h, d = qkv_Bx3xHxK.shape
  kernel = functools.partial(_self_kernel, scale=d ** -0.5)
  index_1 = jnp.reshape(index, (1,)).astype(jnp.int32)
  return pl.pallas_call(
      kernel, grid=(b, h), interpret=interpret,
      out_shape=(jax.ShapeDtypeStruct((b, h, d), qkv_Bx3xHxK.dtype),
                 jax.ShapeDtypeStruct(cache_BxSx2xHxK.shape, cache_BxSx2xHxK.dtype)),
      input_output_aliases={2: 1},
      compiler_params=plgpu.CompilerParams(num_warps=2, num_stages=1),
  )(index_1, qkv_Bx3xHxK, cache_BxSx2xHxK)


# --- the VAD encoder's step: every layer for one token in one kernel -------------------------


def _pow2(n: int) -> int:
  return 1 << (n - 1).bit_length()


def _load_padded(ref):
  """A 1-D or 2-D ref whole, zero-padded to power-of-two sizes (Triton's tiles)."""
  dims = [jnp.arange(_pow2(n)) for n in ref.shape]
  if len(dims) == 1:
    return plgpu.load(ref.at[pl.ds(0, dims[0].shape[0])], mask=dims[0] < ref.shape[0], other=0.0)
  mask = (dims[0] < ref.shape[0])[:, None] & (dims[1] < ref.shape[1])[None, :]
  return plgpu.load(ref.at[pl.ds(0, dims[0].shape[0]), pl.ds(0, dims[1].shape[0])], mask=mask,
                    other=0.0)


def _vad_kernel(index_ref, vad_ref, params, caches, out_ref, caches_out, *, width, eps):
  # caches_out are the caches' buffers (aliased): read from one, written through the other.
  b = pl.program_id(0)
  index = index_ref[0]  # the position; the cache slot is `slot`
  slot = _slot(index_ref, caches[0])
  w = _pow2(width)
  lanes_W = jnp.arange(w) < width  # the real entries of a padded vector
  zero, cache_k, cache_v = jnp.int32(0), jnp.int32(0), jnp.int32(1)  # traced (see _self_kernel)

  def dense(x_I, p):
    return jnp.sum(x_I[:, None] * _load_padded(p["kernel"]), axis=0) + _load_padded(p["bias"])

  def norm(x_W, p):  # layers.layer_norm: E[(x - mean)^2], over the real entries
    centred_W = jnp.where(lanes_W, x_W - jnp.sum(x_W) / width, 0.0)
    var = jnp.sum(centred_W * centred_W) / width
    return (centred_W * jax.lax.rsqrt(var + eps) * _load_padded(p["scale"])
            + _load_padded(p["bias"]))

  def vector_at(ref, *idx):
    return plgpu.load(ref.at[(*idx, pl.ds(0, w))], mask=lanes_W, other=0.0)

  x_W = vector_at(vad_ref, b, zero) + vector_at(params["position_embedding"], index)
  x_W = norm(x_W, params["norm"])
  for i, (cache_ref, cache_out_ref) in enumerate(zip(caches, caches_out)):
    p = params[f"layers_{i}"]
    q_W, k_W, v_W = dense(x_W, p["query"]), dense(x_W, p["key"]), dense(x_W, p["value"])
    scale = width ** -0.5  # one head

    def load_block(start, valid_S, cache_ref=cache_ref):
      rows, mask = pl.ds(start, BLOCK_KEYS), valid_S[:, None] & lanes_W[None, :]
      k = plgpu.load(cache_ref.at[b, rows, cache_k, zero, pl.ds(0, w)], mask=mask, other=0.0)
      v = plgpu.load(cache_ref.at[b, rows, cache_v, zero, pl.ds(0, w)], mask=mask, other=0.0)
      return k, v

    carry = (jnp.sum(q_W * k_W) * scale, jnp.float32(1.0), v_W)
    _, l, acc_W = _attend_blocks(q_W, load_block, slot, carry, scale)
    y_W = norm(x_W + acc_W / l, p["norm1"])
    y_W = norm(y_W + dense(jnp.maximum(dense(y_W, p["fc1"]), 0.0), p["fc2"]), p["norm2"])
    x_W = x_W + y_W
    plgpu.store(cache_out_ref.at[b, slot, cache_k, zero, pl.ds(0, w)], k_W, mask=lanes_W)
    plgpu.store(cache_out_ref.at[b, slot, cache_v, zero, pl.ds(0, w)], v_W, mask=lanes_W)
  plgpu.store(out_ref.at[b, zero, pl.ds(0, w)], x_W, mask=lanes_W)


def vad_step_kernel(vad_Bx1xW, params, caches, index, eps, interpret=False):
  """The VAD encoder (one head) over one new token at position `index`: (output Bx1xW, the
  caches with the token's keys and values in slot `index`). params: the encoder's."""
  b, _, width = vad_Bx1xW.shape
  index_1 = jnp.reshape(index, (1,)).astype(jnp.int32)
  first_cache = 2 + len(jax.tree.leaves(params))  # flat position of caches[0] among the inputs
  return pl.pallas_call(
      functools.partial(_vad_kernel, width=width, eps=eps), grid=(b,), interpret=interpret,
      out_shape=(jax.ShapeDtypeStruct(vad_Bx1xW.shape, jnp.float32),
                 tuple(jax.ShapeDtypeStruct(c.shape, c.dtype) for c in caches)),
      input_output_aliases={first_cache + i: 1 + i for i in range(len(caches))},
      compiler_params=plgpu.CompilerParams(num_warps=1, num_stages=1),
  )(index_1, vad_Bx1xW.astype(jnp.float32), params, tuple(caches))


# --- the XLA path and the choice between the two --------------------------------------------


def _cross_xla(q_BxHxK, k_BxPxHxK, v_BxPxHxK):
  probs = layers.attention_probs(q_BxHxK[:, None], k_BxPxHxK, None)
  return layers.attend(probs, v_BxPxHxK)[:, 0]


def _self_xla(qkv_Bx3xHxK, cache_BxSx2xHxK, index):
  cache = layers.update_cache(cache_BxSx2xHxK, qkv_Bx3xHxK[:, None, 1:], index)
  mask_1x1xS = layers.cached_causal_mask(index, 1, cache.shape[1])
  probs = layers.attention_probs(qkv_Bx3xHxK[:, None, 0], cache[:, :, 0], mask_1x1xS)
  return layers.attend(probs, cache[:, :, 1])[:, 0], cache


def _split_by_rows(kernel_fn, batched, *args):
  """kernel_fn(*args) with each device running the kernel on its own rows of the batch.

  XLA cannot partition a Pallas kernel: left alone it would gather every operand onto every
  device and run the whole batch there. batched[i]: whether args[i] (every leaf of it) has
  the batch as leading axis; the others (weights, the index) are replicated. All outputs have
  the batch as leading axis.
  """
  leaves, tree = jax.tree.flatten(args)
  batched_leaves = jax.tree.leaves([jax.tree.map(lambda _, b=b: b, a) for a, b in
                                    zip(args, batched)])

  def run(*leaves):
    return kernel_fn(*jax.tree.unflatten(tree, leaves))

  def rows_spec(sharding):
    spec = getattr(sharding, "spec", None)
    return spec[0] if spec else None

  def shardings(mesh, operands):
    # The rows' split: that of the first batched operand that has one (None: whole batches).
    rows = next((r for o, b in zip(operands, batched_leaves)
                 if b and (r := rows_spec(o.sharding)) is not None), None)
    as_rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(rows))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return as_rows, tuple(as_rows if b else whole for b in batched_leaves)

  def infer(mesh, operands, results):
    as_rows, _ = shardings(mesh, operands)
    return jax.tree.map(lambda _: as_rows, results)

  def partition(mesh, operands, results):
    as_rows, operand_shardings = shardings(mesh, operands)
    return mesh, run, jax.tree.map(lambda _: as_rows, results), operand_shardings

  def rule(mesh, operands, results):
    del mesh
    name = lambda i, b, shape: " ".join((["rows"] if b else [])
                                        + [f"a{i}_{d}" for d in range(int(b), len(shape))])
    ins = [name(i, b, o.shape) for i, (o, b) in enumerate(zip(operands, batched_leaves))]
    outs = [name(len(ins) + i, True, r.shape) for i, r in enumerate(jax.tree.leaves(results))]
    return f"{', '.join(ins)} -> {', '.join(outs)}"

  call = custom_partitioning(run)
  call.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule)
  return call(*leaves)


# Triton in XLA, which builds the kernels, supports Ampere (sm_80) and later: on an older GPU
# 'pallas' lowers XLA's path (benchmark/aot.py records the choice per GPU).
MIN_COMPUTE_CAPABILITY = (8, 0)


def for_compute_capability(impl: str, compute_capability: tuple[int, int]) -> str:
  """impl, or 'xla' where the kernels cannot be built for a GPU of that compute capability."""
  if impl == "pallas" and tuple(compute_capability) < MIN_COMPUTE_CAPABILITY:
    return "xla"
  return impl


def _local_gpu_compute_capability() -> tuple[int, int] | None:
  try:
    device = jax.local_devices(backend="gpu")[0]
  except Exception:  # pylint: disable=broad-except  # no GPU backend: nothing to check
    return None
  cc = str(getattr(device, "compute_capability", "") or "")
  return tuple(int(x) for x in cc.split(".")[:2]) if cc[:1].isdigit() else None


def _dispatch(impl, xla_fn, kernel_fn, batched, *args):
  """impl: model.decode_kernels (config.DECODE_KERNEL_IMPLS, checked there)."""
  cc = _local_gpu_compute_capability() if impl == "pallas" else None
  if cc is not None:
    impl = for_compute_capability(impl, cc)
  if impl == "xla":
    return xla_fn(*args)
  if impl == "pallas_interpret":  # the GPU's path on any device, the kernels interpreted
    return _split_by_rows(functools.partial(kernel_fn, interpret=True), batched, *args)
  if impl != "pallas":
    raise ValueError(f"unknown decode kernel choice {impl!r} (model.decode_kernels)")
  on_gpu = lambda *args: _split_by_rows(kernel_fn, batched, *args)
  return jax.lax.platform_dependent(*args, cuda=on_gpu, default=xla_fn)


def _tiles(head_dim: int, impl: str) -> str:
  """impl, or 'xla' where a head is not a power of two wide (a Triton tile must be)."""
  return impl if head_dim == _pow2(head_dim) else "xla"


def cross_attention_step(q_BxHxK, k_BxPxHxK, v_BxPxHxK, impl: str):
  """One query per sequence over its image's P keys (BxHxK), by `impl` (see the module)."""
  return _dispatch(_tiles(q_BxHxK.shape[-1], impl), _cross_xla, cross_attention_kernel,
                   (True, True, True), q_BxHxK, k_BxPxHxK, v_BxPxHxK)


def vad_step(vad_Bx1xW, params, caches, index, eps, xla_result, impl: str):
  """The VAD encoder's step for one token by `impl`. xla_result: the encoder's own (output,
  caches), traced beside; XLA drops it from a program that takes the kernel's."""
  kernel = functools.partial(vad_step_kernel, eps=eps)
  return _dispatch(impl, lambda *_: xla_result, kernel, (True, False, True, False), vad_Bx1xW,
                   params, caches, index)


def self_attention_step(qkv_Bx3xHxK, cache_BxSx2xHxK, index, impl: str):
  """One query per sequence over cache slots 0..index-1 and its own key; also returns the
  cache with the new key and value written to slot `index`."""
  return _dispatch(_tiles(qkv_Bx3xHxK.shape[-1], impl), _self_xla, self_attention_kernel,
                   (True, True, False), qkv_Bx3xHxK, cache_BxSx2xHxK, index)
