"""ArtEmis's text-to-emotion classifier restated in Flax (the judge of the paper's EA).

ArtEmis's TextEmotionClassifier (optas/artemis, neural_models/text_emotional_clf.py with
lstm_encoder.py and mlp.py), in evaluation mode:

  word ids -> Embedding (GloVe rows, frozen) -> the word layers (Linear / ReLU; Dropout is the
  identity) -> a unidirectional LSTM (PyTorch's gate order i, f, g, o and its two biases) ->
  pooling of the outputs ('max', 'last' or 'mean') -> the head (Linear / BatchNorm1d with its
  running statistics / ReLU) -> 9 logits.

ArtEmis packs each chunk of texts and pads the LSTM's outputs with zeros up to the chunk's longest
text (pad_packed_sequence), and its 'max' pooling runs over those zeros too: a text shorter than
the chunk's longest one gets max(0, ...) per unit. `chunk_len` carries that length, so the logits
equal ArtEmis's for the same chunks. Layer layouts and sizes come from the imported file
(weights/artemis_clf.py), not from a config.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # a small network: exact float32 products, as PyTorch's CPU


@dataclasses.dataclass(frozen=True)
class Layer:
  """One step of a layer chain: kind linear (features, use_bias) | relu | batchnorm (eps, affine)."""
  kind: str
  features: int = 0
  use_bias: bool = True
  eps: float = 1e-5
  affine: bool = True


@dataclasses.dataclass(frozen=True)
class ArtemisClfSpec:
  """The network's shape, as read from the pickled module."""
  vocab_size: int
  embed_dim: int
  word_layers: tuple[Layer, ...]  # between the embedding and the LSTM
  lstm_dim: int
  lstm_layers: int
  lstm_bias: bool
  feature: str  # max | last | mean (LSTMEncoder.feature_type)
  head_layers: tuple[Layer, ...]  # the classification MLP, ending in the 9 logits


class TorchLSTMLayer(nn.Module):
  """One nn.LSTM layer, batch first, with PyTorch's parameter layout: w_ih [4H, In], w_hh [4H, H],
  b_ih and b_hh [4H], gates stacked as input, forget, cell, output."""
  hidden: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x_BxTxI):
    h4 = 4 * self.hidden
    w_ih = self.param("w_ih", nn.initializers.zeros, (h4, x_BxTxI.shape[-1]))
    w_hh = self.param("w_hh", nn.initializers.zeros, (h4, self.hidden))
    bias = jnp.zeros((h4,), x_BxTxI.dtype)
    if self.use_bias:
      bias = self.param("b_ih", nn.initializers.zeros, (h4,)) + self.param("b_hh", nn.initializers.zeros, (h4,))
    x_gates_TxBx4H = jnp.einsum("bti,gi->tbg", x_BxTxI, w_ih, precision=HIGHEST) + bias

    def step(carry, x_gates_Bx4H):
      h_BxH, c_BxH = carry
      gates = x_gates_Bx4H + jnp.einsum("bh,gh->bg", h_BxH, w_hh, precision=HIGHEST)
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_BxH = jax.nn.sigmoid(o) * jnp.tanh(c_BxH)
      return (h_BxH, c_BxH), h_BxH

    zeros = jnp.zeros((x_BxTxI.shape[0], self.hidden), x_BxTxI.dtype)
    _, h_TxBxH = jax.lax.scan(step, (zeros, zeros), x_gates_TxBx4H)
    return jnp.swapaxes(h_TxBxH, 0, 1)  # outputs past a row's length are discarded by the pooling


def _pool(h_BxTxH, lengths_B, chunk_len, feature: str):
  """LSTMEncoder's pooling of pad_packed_sequence's output (zeros from each length to chunk_len).
  A text of no words (which ArtEmis's pack_padded_sequence refuses) pools to zeros."""
  t_T = jnp.arange(h_BxTxH.shape[1])
  valid_BxT = t_T[None, :] < lengths_B[:, None]
  has_words_Bx1 = (lengths_B > 0)[:, None]
  if feature == "max":
    filler_T = jnp.where(t_T < chunk_len, 0.0, -jnp.inf)
    pooled_BxH = jnp.max(jnp.where(valid_BxT[..., None], h_BxTxH, filler_T[None, :, None]), axis=1)
  elif feature == "last":
    pooled_BxH = jnp.take_along_axis(h_BxTxH, jnp.maximum(lengths_B - 1, 0)[:, None, None], axis=1)[:, 0]
  elif feature == "mean":
    pooled_BxH = jnp.sum(jnp.where(valid_BxT[..., None], h_BxTxH, 0.0), axis=1)
    pooled_BxH = pooled_BxH / jnp.maximum(lengths_B, 1)[:, None].astype(h_BxTxH.dtype)
  else:
    raise ValueError(f"unknown LSTM feature {feature!r}")
  return jnp.where(has_words_Bx1, pooled_BxH, 0.0)


class ArtemisTextClassifier(nn.Module):
  """Logits float32[B, 9] of word ids int32[B, T] (padded past each row's length)."""
  spec: ArtemisClfSpec

  @nn.compact
  def __call__(self, ids_BxT, lengths_B, chunk_len):
    spec = self.spec
    x = nn.Embed(spec.vocab_size, spec.embed_dim, name="embedding")(ids_BxT)
    for i, layer in enumerate(spec.word_layers):
      x = _apply(layer, x, f"word_{i}")
    for i in range(spec.lstm_layers):
      x = TorchLSTMLayer(spec.lstm_dim, spec.lstm_bias, name=f"lstm_{i}")(x)
    x = _pool(x, lengths_B, chunk_len, spec.feature)
    for i, layer in enumerate(spec.head_layers):
      x = _apply(layer, x, f"head_{i}")
    return x


def _apply(layer: Layer, x, name: str):
  """One chain step; called inside ArtemisTextClassifier's compact __call__ (its scope)."""
  if layer.kind == "linear":
    return nn.Dense(layer.features, use_bias=layer.use_bias, precision=HIGHEST, name=name)(x)
  if layer.kind == "relu":
    return jax.nn.relu(x)
  if layer.kind == "batchnorm":
    return nn.BatchNorm(use_running_average=True, epsilon=layer.eps, use_scale=layer.affine,
                        use_bias=layer.affine, name=name)(x)
  raise ValueError(f"unknown layer kind {layer.kind!r}")
