"""CLIP ViT image tower (pre-LN, class token, ln_pre / ln_post, QuickGELU).

Returns the patch tokens after ln_post with the class token dropped (what the
decoder attends to) and the pooled class token after ln_post. Images are uint8
in 0..255 or floats in [0, 1], BxHxWx3; normalisation happens here, with
CLIP's constants by default or ImageNet's (the public SEVLM code) by config.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sevlm_jax.models import layers
from sevlm_jax.models.config import VisionConfig
from sevlm_jax.models.layers import DenseParams, layer_norm

NORM_CONSTANTS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalize_images(images_BxHxWx3: jax.Array, image_norm: str) -> jax.Array:
  """uint8 0..255 or float 0..1 -> per-channel standardised float32."""
  x = images_BxHxWx3
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  mean, std = NORM_CONSTANTS[image_norm]
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


class Attention(nn.Module):
  """Multi-head self-attention; q, k and v projected by one GEMM of the concatenated kernels.

  The parameters stay three Dense layers (q_proj, k_proj, v_proj: the checkpoints' layout);
  one 3x wider GEMM keeps the matrix units busier than three narrow ones.
  attention_impl 'cudnn' runs the attention itself through cuDNN's fused kernel
  (jax.nn.dot_product_attention; GPU, bf16 only); 'xla' is plain einsums.
  """
  config: VisionConfig
  dtype: Any = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x_BxNxD):
    c = self.config
    d = x_BxNxD.shape[-1]
    kernels, biases = zip(*(DenseParams(c.width, name=n)(d)
                            for n in ("q_proj", "k_proj", "v_proj")))
    qkv_kernel = jnp.concatenate(kernels, axis=1).astype(self.dtype)
    qkv = (layers.einsum("bnd,de->bne", x_BxNxD.astype(self.dtype), qkv_kernel)
           + jnp.concatenate(biases).astype(self.dtype))
    q, k, v = (t.reshape(*x_BxNxD.shape[:2], c.heads, -1) for t in jnp.split(qkv, 3, axis=-1))
    if self.attention_impl == "cudnn":
      out_BxNxHxK = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    else:
      scale = q.shape[-1] ** -0.5
      logits_BxHxNxN = layers.einsum("bqhk,bshk->bhqs", q, k, jnp.float32) * scale
      probs = jax.nn.softmax(logits_BxHxNxN, axis=-1).astype(v.dtype)
      out_BxNxHxK = layers.einsum("bhqs,bshk->bqhk", probs, v)
    return nn.Dense(c.width, dtype=self.dtype, dot_general=layers.dot_general, name="out_proj")(
        out_BxNxHxK.reshape(x_BxNxD.shape))


class ResidualBlock(nn.Module):
  config: VisionConfig
  dtype: Any = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x_BxNxD):
    c = self.config
    h = layer_norm("ln_1", self.dtype)(x_BxNxD)
    x_BxNxD = x_BxNxD + Attention(c, self.dtype, self.attention_impl, name="attn")(h)
    h = layer_norm("ln_2", self.dtype)(x_BxNxD)
    h = nn.Dense(c.mlp_dim, dtype=self.dtype, dot_general=layers.dot_general, name="fc1")(h)
    h = nn.Dense(c.width, dtype=self.dtype, dot_general=layers.dot_general,
                 name="fc2")(quick_gelu(h))
    return x_BxNxD + h


class VisionTower(nn.Module):
  config: VisionConfig
  image_norm: str = "clip"
  dtype: Any = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, images_BxHxWx3):
    """Returns (patches_BxPxD after ln_post, class token BxD after ln_post)."""
    c = self.config
    if images_BxHxWx3.ndim != 4 or images_BxHxWx3.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f"images must be Bx{c.image_size}x{c.image_size}x3"
                       f" (model.vision.image_size), got shape {tuple(images_BxHxWx3.shape)}")
    x = normalize_images(images_BxHxWx3, self.image_norm).astype(self.dtype)
    x = nn.Conv(c.width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                padding="VALID", use_bias=False, dtype=self.dtype,
                conv_general_dilated=layers.conv_general_dilated, name="patch_embedding")(x)
    b = x.shape[0]
    x_BxPxD = x.reshape(b, -1, c.width)
    scale = c.width ** -0.5
    cls_D = self.param("class_embedding", nn.initializers.normal(scale), (c.width,))
    pos_NxD = self.param("position_embedding", nn.initializers.normal(scale),
                         (c.num_patches + 1, c.width))
    cls_Bx1xD = jnp.broadcast_to(cls_D.astype(self.dtype), (b, 1, c.width))
    x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxPxD], axis=1) + pos_NxD.astype(self.dtype)[None]
    x_BxNxD = layer_norm("ln_pre", self.dtype)(x_BxNxD)
    for i in range(c.layers):
      x_BxNxD = ResidualBlock(c, self.dtype, self.attention_impl, name=f"layers_{i}")(x_BxNxD)
    x_BxNxD = layer_norm("ln_post", self.dtype)(x_BxNxD)
    return x_BxNxD[:, 1:], x_BxNxD[:, 0]
