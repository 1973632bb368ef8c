"""Text-to-emotion classifier: the EA judge's network (README.md, "Metrics").

Embedding -> bidirectional LSTM -> masked mean and max pooling -> MLP -> one
logit per emotion. The same family as ArtEmis's GloVe+LSTM classifier, but
over GPT-2 token ids and trained from scratch on the training utterances.
"""

import flax.linen as nn
import jax.numpy as jnp

from sevlm_jax.vocab import NUM_EMOTIONS


class EmotionClassifier(nn.Module):
  vocab_size: int
  embed_dim: int
  hidden_dim: int
  mlp_dim: int
  dropout: float = 0.0
  num_classes: int = NUM_EMOTIONS

  @nn.compact
  def __call__(self, ids_BxL, mask_BxL, *, deterministic: bool = True):
    """ids_BxL: int token ids < vocab_size, right-padded; mask_BxL: 1 on real tokens. Returns logits BxC."""
    mask_BxL = mask_BxL.astype(bool)
    lengths_B = jnp.sum(mask_BxL, axis=-1).astype(jnp.int32)
    x_BxLxE = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(ids_BxL)
    x_BxLxE = nn.Dropout(self.dropout)(x_BxLxE, deterministic=deterministic)
    # seq_lengths makes the backward LSTM start at each text's last real token, not at the padding.
    h_BxLxH = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim), name="forward"),
                               nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim), name="backward"),
                               name="bilstm")(x_BxLxE, seq_lengths=lengths_B)
    m_BxLx1 = mask_BxL[..., None]
    mean_BxH = jnp.sum(jnp.where(m_BxLx1, h_BxLxH, 0.0), axis=1) / jnp.maximum(lengths_B, 1)[:, None]
    max_BxH = jnp.max(jnp.where(m_BxLx1, h_BxLxH, -jnp.inf), axis=1)
    max_BxH = jnp.where(lengths_B[:, None] > 0, max_BxH, 0.0)  # an empty text pools to zeros, not -inf
    pooled_Bx2H = jnp.concatenate([mean_BxH, max_BxH], axis=-1)
    y_BxM = nn.relu(nn.Dense(self.mlp_dim, name="mlp")(pooled_Bx2H))
    y_BxM = nn.Dropout(self.dropout)(y_BxM, deterministic=deterministic)
    return nn.Dense(self.num_classes, name="logits")(y_BxM)


def from_config(config) -> EmotionClassifier:
  """The classifier described by an emotion_classifier config (configs/emotion_classifier.py)."""
  return EmotionClassifier(vocab_size=config.vocab_size, embed_dim=config.embed_dim,
                           hidden_dim=config.hidden_dim, mlp_dim=config.mlp_dim, dropout=config.dropout)
