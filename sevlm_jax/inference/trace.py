"""A generation's trace per explanation word and token: where the model looked, and the VAD it
predicted.

Tokens vs words: GPT-2's BPE marks a word's first token with a leading space, so a word is a
token with a leading space and the tokens without one that follow it (punctuation stays with the
word before it, as in text.split()). A word's attention map is the mean of its tokens' maps.
A token's map is the cross-attention of the position that chose it (the position before it),
averaged over heads and all decoder layers (models.sevlm.mean_cross_attention); its VAD is the
VAD head's prediction made at that same position, i.e. for that token.

The explanation's tokens are those after the first " because" and before the stop token; a
generation without " because" has every generated token counted as explanation, so nothing the
model wrote goes unexplained.
"""

import numpy as np

from sevlm_jax import vocab
from sevlm_jax.inference import sentences


def explanation_positions(tokens_N, length: int, because_id: int,
                          explanation_after: str = "first_because") -> np.ndarray:
  """Indices of a generation's explanation tokens (see the module docstring): after the first
  " because", or the last with explanation_after='last_because', as sentences.parse_generation."""
  sentences.check_explanation_after(explanation_after)
  text_N = np.asarray(tokens_N)[:length]
  hits = np.flatnonzero(text_N == because_id)
  start = int(hits[-1 if explanation_after == "last_because" else 0]) + 1 if hits.size else 0
  return np.asarray([i for i in range(start, length) if text_N[i] < vocab.GPT2_VOCAB_SIZE], int)


def group_words(tokenizer, ids) -> list[list[int]]:
  """Runs of indices into ids, one per word (a run starts at a token with a leading space)."""
  words: list[list[int]] = []
  for k, token_id in enumerate(ids):
    if not words or tokenizer.token_text(int(token_id)).startswith(" "):
      words.append([])
    words[-1].append(k)
  return words


def trace_entry(tokenizer, tokens_N, length: int, attention_NxP, vad_Nx3, because_id: int,
                explanation_after: str = "first_because") -> dict:
  """{'words', 'attention' float32 WxGxG (G*G = patches), 'tokens', 'vad' float32 Tx3} of one
  generation's explanation."""
  positions = explanation_positions(tokens_N, length, because_id, explanation_after)
  ids = np.asarray(tokens_N)[positions]
  attention_NxP = np.asarray(attention_NxP, np.float32)
  p = attention_NxP.shape[-1]
  grid = int(round(p ** 0.5))
  if grid * grid != p:
    raise ValueError(f"{p} patches are not a square grid")
  runs = group_words(tokenizer, ids)
  maps = [attention_NxP[positions[run]].mean(axis=0) for run in runs]
  return {
      "words": [tokenizer.decode(ids[run]).strip() for run in runs],
      "attention": (np.stack(maps) if maps else np.zeros((0, p), np.float32)).reshape(-1, grid,
                                                                                       grid),
      "tokens": [tokenizer.token_text(int(t)) for t in ids],
      "vad": np.asarray(vad_Nx3, np.float32)[positions].reshape(-1, 3),
  }
