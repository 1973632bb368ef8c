"""A generation's text: "{emotion} because {explanation}" after the prompt "the emotion is".

Shared by evaluation (the saved predictions), the predictor and the traces (inference/trace.py
starts a trace's words where parse_generation starts the explanation). Text only: no JAX here.
"""

import re

import numpy as np

from sevlm_jax import vocab

# Where the explanation starts (eval.explanation_after): after the first " because" (ours), or
# after the last one (the public code's split).
EXPLANATION_AFTER = ("first_because", "last_because")

_BECAUSE = re.compile(r"\bbecause\b", re.IGNORECASE)
_PROMPT = re.compile(r"^\s*(<\|endoftext\|>)?\s*the emotion is\b", re.IGNORECASE)


def check_explanation_after(explanation_after: str) -> None:
  if explanation_after not in EXPLANATION_AFTER:
    raise ValueError(f"eval.explanation_after={explanation_after!r}; choose one of "
                     f"{', '.join(EXPLANATION_AFTER)}")


def _clean(text: str) -> str:
  return " ".join(text.split())


def parse_generation(text: str, explanation_after: str = "first_because") -> tuple[str, str]:
  """(emotion text, explanation text) of a generation.

  The emotion is the text before the first "because" and the explanation the
  text after it (a leading "the emotion is" prompt is dropped); with
  explanation_after="last_because", the text after the last "because", as the
  public code splits (an explanation that itself says "because" loses its
  start). Without "because", a leading emotion name (e.g. "something else") is
  split off as the emotion and the rest is the explanation; otherwise the whole
  text is the emotion and the explanation is empty.
  """
  check_explanation_after(explanation_after)
  text = _PROMPT.sub("", text, count=1)
  found = list(_BECAUSE.finditer(text))
  if found:
    last = found[-1] if explanation_after == "last_because" else found[0]
    return _clean(text[:found[0].start()]), _clean(text[last.end():])
  words = text.split()
  lowered = [w.lower() for w in words]
  for name in sorted(vocab.EMOTIONS, key=len, reverse=True):
    k = len(name.split())
    if lowered[:k] == name.split():
      return " ".join(words[:k]), " ".join(words[k:])
  return _clean(text), ""


def token_text(tokenizer, ids: np.ndarray) -> str:
  """Generated ids up to the first <eos>, as text; the added tokens (among them the other stop
  tokens of eval.stop_on='any_special', and the padding after a stop) are left out."""
  ids = [int(i) for i in ids]
  if vocab.EOS_ID in ids:
    ids = ids[:ids.index(vocab.EOS_ID)]
  return tokenizer.decode([i for i in ids if i < vocab.GPT2_VOCAB_SIZE])


def full_sentence(generated: str) -> str:
  """The prompt and what followed it: 'the emotion is awe because ...'."""
  return (vocab.PROMPT + generated).strip()


def prediction(tokenizer, ids: np.ndarray, explanation_after: str = "first_because"
               ) -> dict[str, str]:
  """One generation's emotion, explanation and whole sentence."""
  text = token_text(tokenizer, ids)
  emotion, explanation = parse_generation(text, explanation_after)
  return {"emotion": emotion, "explanation": explanation, "text": full_sentence(text)}
