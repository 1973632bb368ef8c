"""An image's emotion histogram and its dominant emotion, by the two rules in use.

  dominant_half     histogram > 0.5 (the public SEVLM code)
  dominant_artemis  histogram >= 0.5 (ArtEmis's has_emotion_max_dominance); a tie, which
                    can only be two emotions at exactly half, goes to the lower index in
                    EMOTIONS order (ArtEmis leaves it to pandas' value_counts ordering).
Both give -1 when no emotion dominates.
"""

import numpy as np

_EPS = 1e-6


def histogram_from_counts(counts) -> np.ndarray:
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  return (counts / total if total > 0 else counts).astype(np.float32)


def dominant_half(histogram) -> int:
  """Emotion holding more than half of the histogram, else -1 (public SEVLM code's rule)."""
  h = np.asarray(histogram, np.float64)
  m = int(np.argmax(h))
  return m if h[m] > 0.5 + _EPS else -1


def dominant_artemis(histogram) -> int:
  """Emotion holding at least half (ArtEmis's rule); a tie goes to the lower EMOTIONS index; else -1."""
  h = np.asarray(histogram, np.float64)
  top = h.max()
  if top < 0.5 - _EPS:
    return -1
  return int(np.flatnonzero(h >= top - _EPS)[0])
