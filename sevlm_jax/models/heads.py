"""Contrastive head: an MLP scoring (image, emotion, explanation) feature triples."""

import flax.linen as nn
import jax.numpy as jnp

from sevlm_jax.models.config import HeadConfig


class ContrastiveHead(nn.Module):
  """concat(3 x D) -> [Dense(hidden) + ReLU] x layers -> Dense(1); returns B scores (float32)."""
  config: HeadConfig

  @nn.compact
  def __call__(self, image_feat_BxD, emotion_feat_BxD, explanation_feat_BxD):
    x = jnp.concatenate([image_feat_BxD, emotion_feat_BxD, explanation_feat_BxD],
                        axis=-1).astype(jnp.float32)
    init = nn.initializers.normal(0.02)  # HF init, as the public head lives inside GPT-2
    for i in range(self.config.layers):
      x = nn.relu(nn.Dense(self.config.hidden, kernel_init=init, name=f"hidden_{i}")(x))
    return nn.Dense(1, kernel_init=init, name="out")(x)[..., 0]
