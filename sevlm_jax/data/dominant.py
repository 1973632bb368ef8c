"""An image's emotion histogram and its dominant emotion, by the rules in use.

  dominant_half            histogram > 0.5 (the public SEVLM code: the paper's ACC)
  dominant_artemis         histogram >= 0.5 (ArtEmis's has_emotion_max_dominance); a tie, which
                           can only be two emotions at exactly half, goes to the lower index in
                           EMOTIONS order (ArtEmis leaves it to pandas' value_counts ordering).
  dominant_artemis_no_tie  histogram >= 0.5 and no tie (ArtEmis's dominant_maximizer, which its
                           evaluation of emotion alignment uses): a tie has no dominant emotion.
All give -1 when no emotion dominates. RULES maps eval.dominant's values to them.

EA may take another rule over other annotations (eval.ea_dominant, eval.ea_histogram): the public
code's EA (its single_caption_per_image.py, a copy of ArtEmis's evaluation with `>` for `>=`)
takes `half` over the annotations the length filters kept, while its ACC reads the histogram of
all of them (ArtEmis's image-emotion-histogram.csv). A record keeps both: `histogram` (what ACC
reads; meta.json says what it counts) and `counts` (the kept annotations, one per utterance).
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


def dominant_artemis_no_tie(histogram) -> int:
  """Emotion holding at least half and more than any other (ArtEmis's dominant_maximizer), else -1."""
  h = np.asarray(histogram, np.float64)
  top = h.max()
  winners = np.flatnonzero(h >= top - _EPS)
  return int(winners[0]) if top >= 0.5 - _EPS and len(winners) == 1 else -1


def dominant_artemis(histogram) -> int:
  """Emotion holding at least half (ArtEmis's rule); a tie goes to the lower EMOTIONS index; else -1."""
  h = np.asarray(histogram, np.float64)
  top = h.max()
  if top < 0.5 - _EPS:
    return -1
  return int(np.flatnonzero(h >= top - _EPS)[0])


# eval.dominant -> its rule.
RULES = {"half": dominant_half, "artemis": dominant_artemis, "artemis_no_tie": dominant_artemis_no_tie}

# eval.ea_dominant: 'acc' (eval.dominant's rule) or a rule of RULES.
EA_RULES = ("acc", *RULES)
# eval.ea_histogram -> which histogram of a record EA's rule reads: 'acc' (the record's
# `histogram`, ACC's) | 'kept' (its kept annotations: the normalised `counts`).
EA_HISTOGRAMS = {"acc": "the histogram ACC reads", "kept": "the kept annotations"}


def ea_rule(ea_dominant: str, acc_rule: str) -> str:
  """The name of EA's rule: eval.ea_dominant, or eval.dominant's where it says 'acc'."""
  return acc_rule if ea_dominant == "acc" else ea_dominant


def ea_histogram(record: dict, which: str) -> np.ndarray:
  """The histogram EA's rule reads of a record (with `histogram` and `counts`): eval.ea_histogram."""
  if which == "acc":
    return np.asarray(record["histogram"], np.float32)
  return histogram_from_counts(record["counts"])
