"""The nine ArtEmis emotions, in the fixed order used everywhere in the project."""

EMOTIONS = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
    "something else",
)
NUM_EMOTIONS = len(EMOTIONS)
EMOTION_TO_INDEX = {name: i for i, name in enumerate(EMOTIONS)}

# Ternary grouping of ArtEmis: positive, negative, other.
POSITIVE = EMOTIONS[:4]
NEGATIVE = EMOTIONS[4:8]
OTHER = EMOTIONS[8:]


def emotion_index(name: str) -> int:
  """Index of an emotion name (case and surrounding space ignored); ValueError if unknown."""
  key = " ".join(name.strip().lower().split())
  if key not in EMOTION_TO_INDEX:
    raise ValueError(f"unknown emotion {name!r}; expected one of {', '.join(EMOTIONS)}")
  return EMOTION_TO_INDEX[key]


def ternary(index: int) -> int:
  """0 for a positive emotion, 1 for a negative one, 2 for 'something else'."""
  return 0 if index < 4 else (1 if index < 8 else 2)
