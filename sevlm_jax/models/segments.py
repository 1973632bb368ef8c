"""Which positions of a sequence are its emotion part and which its explanation part.

Either from the segment ids (every token of "<bos> the emotion is {emotion}" has the emotion
segment, every token from " because" to <eos> the explanation segment), or, with
`fixed_emotion_len` = N > 0, by position as the public code does: the first N positions are
the emotion part and every later one, padding included, the explanation part. The VAD fusion,
the VAD loss and the contrastive means all read these masks, so one switch moves all three.
"""

import jax
import jax.numpy as jnp


def part_masks(segment_ids_BxL: jax.Array, emotion_segment_id: int, explanation_segment_id: int,
               fixed_emotion_len: int = 0, positions_L: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
  """(emotion_BxL, explanation_BxL) boolean masks; padding is not removed here.

  positions_L: the positions of the L tokens (0..L-1 unless given; decoding feeds later ones).
  """
  if fixed_emotion_len:
    if positions_L is None:
      positions_L = jnp.arange(segment_ids_BxL.shape[1])
    position_1xL = positions_L[None]
    emotion_BxL = jnp.broadcast_to(position_1xL < fixed_emotion_len, segment_ids_BxL.shape)
    return emotion_BxL, ~emotion_BxL
  return segment_ids_BxL == emotion_segment_id, segment_ids_BxL == explanation_segment_id


def config_part_masks(segment_ids_BxL: jax.Array, config, positions_L: jax.Array | None = None
                      ) -> tuple[jax.Array, jax.Array]:
  """part_masks with the segment ids and fixed_emotion_len of a ModelConfig."""
  return part_masks(segment_ids_BxL, config.emotion_segment_id, config.explanation_segment_id,
                    config.fixed_emotion_len, positions_L)
