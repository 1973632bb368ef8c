"""models/layers.py: bf16 products with a float32 result on a CPU, unchanged elsewhere."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from sevlm_jax.models import layers


def _operands(dtype):
  a = jax.random.normal(jax.random.key(0), (2, 5, 64), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (64, 24), jnp.float32).astype(dtype)
  return a, b


def test_bf16_einsum_on_cpu_is_the_float32_product_rounded_once():
  a, b = _operands(jnp.bfloat16)
  got = jax.jit(lambda a, b: layers.einsum("btd,de->bte", a, b))(a, b)
  want = jnp.einsum("btd,de->bte", a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  logits = layers.einsum("btd,de->bte", a, b, jnp.float32)  # asked for float32: not rounded
  np.testing.assert_allclose(np.asarray(logits), np.asarray(
      jnp.einsum("btd,de->bte", a, b, preferred_element_type=jnp.float32)), rtol=1e-6)


def test_float32_operands_give_the_plain_product():
  a, b = _operands(jnp.float32)
  np.testing.assert_array_equal(np.asarray(layers.einsum("btd,de->bte", a, b)),
                                np.asarray(jnp.einsum("btd,de->bte", a, b)))


def test_dense_and_conv_keep_the_compute_dtype():
  x = jnp.ones((1, 8, 8, 3), jnp.bfloat16)
  conv = nn.Conv(4, (4, 4), strides=(4, 4), dtype=jnp.bfloat16,
                 conv_general_dilated=layers.conv_general_dilated)
  y, _ = conv.init_with_output(jax.random.key(0), x)
  assert y.dtype == jnp.bfloat16 and y.shape == (1, 2, 2, 4)
  dense = nn.Dense(6, dtype=jnp.bfloat16, dot_general=layers.dot_general)
  z, variables = dense.init_with_output(jax.random.key(0), y)
  kernel = variables["params"]["kernel"].astype(jnp.bfloat16)
  want = lax.dot_general(y, kernel, (((3,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32).astype(jnp.bfloat16)
  assert z.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(z, np.float32), np.asarray(want, np.float32))


def test_a_program_lowered_for_a_gpu_has_only_the_bf16_product():
  a, b = _operands(jnp.bfloat16)
  fn = jax.jit(lambda a, b: layers.einsum("btd,de->bte", a, b))
  gpu = fn.trace(a, b).lower(lowering_platforms=("cuda",)).as_text()
  cpu = fn.trace(a, b).lower(lowering_platforms=("cpu",)).as_text()
  assert "dot_general" in gpu and "-> tensor<2x5x24xbf16>" in gpu
  assert "-> tensor<2x5x24xf32>" not in gpu  # no float32 product on a GPU
  assert "-> tensor<2x5x24xf32>" in cpu
