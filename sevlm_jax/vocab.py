"""The project's fixed vocabularies: the nine ArtEmis emotions and the token ids shared by the
tokenizer, the model and decoding.

GPT-2's byte-level BPE has 50257 entries; <|endoftext|> (50256) serves as both
<bos> and <eos>. SEVLM appends four tokens, so the embedding table has 50261
rows. Segment ("token type") ids are these added tokens, embedded with the
same word table.
"""

GPT2_VOCAB_SIZE = 50257
BOS_ID = 50256
EOS_ID = 50256
PAD_ID = 50257
PREFIX_ID = 50258
EMOTION_SEGMENT_ID = 50259
EXPLANATION_SEGMENT_ID = 50260
VOCAB_SIZE = 50261

ADDED_TOKENS = ("<pad>", "<prefix>", "<emotion>", "<explanation>")

# Text around the emotion word in every target sequence.
PROMPT = " the emotion is"
BECAUSE = " because"


# The nine ArtEmis emotions, in the fixed order used everywhere (index 0..8).
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


def emotion_index(name: str) -> int:
  """Index of an emotion name (case and surrounding space ignored); ValueError if unknown."""
  key = " ".join(name.strip().lower().split())
  if key not in EMOTION_TO_INDEX:
    raise ValueError(f"unknown emotion {name!r}; expected one of {', '.join(EMOTIONS)}")
  return EMOTION_TO_INDEX[key]
