"""GPT-2 byte-level BPE plus SEVLM's four added tokens, and target sequences.

The BPE files are OpenAI's GPT-2 encoder.json / vocab.bpe, vendored under
third_party/gpt2_bpe/ and checked against their published sha256 on load.
They are read with the `tokenizers` library (no transformers needed).

Ids: 0..50256 are GPT-2's (50256 = <|endoftext|>, used as <bos> and <eos>);
50257..50260 are <pad> <prefix> <emotion> <explanation> (sevlm_jax/vocab.py).

`Tokenizer.encode` is plain BPE of the text: it never turns text such as
"<pad>" or "<|endoftext|>" into control ids, so data can never inject them.
Control ids are placed only by `build_sequence` and decoding code.

Target sequence:

    <bos> the emotion is {emotion} because {explanation}<eos>

  segment <emotion>     : <bos> " the" " emotion" " is" " {emotion}"
  segment <explanation> : " because" " {explanation}" <eos>

Explanation text is normalised before encoding: surrounding space stripped,
runs of whitespace collapsed to one space, lowercased (ArtEmis utterances are
free text with stray capitals and line breaks; the prompt is lowercase).
Sequences longer than max_len are cut at max_len, so a long explanation loses
its tail and its <eos> (as in the public code).
"""

import functools
import hashlib
import pathlib
import re

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers
from sevlm_jax import io_utils
from sevlm_jax import vocab

# Vendored files and their sha256 (as pinned by OpenAI's own tooling).
BPE_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
BPE_DIR_ENV = "SEVLM_GPT2_BPE_DIR"

_SPECIAL_NAMES = {vocab.BOS_ID: "<|endoftext|>"}
_SPECIAL_NAMES.update({vocab.GPT2_VOCAB_SIZE + i: name for i, name in enumerate(vocab.ADDED_TOKENS)})

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
  """Strip, collapse whitespace to single spaces, lowercase."""
  return _WHITESPACE.sub(" ", text).strip().lower()


def default_bpe_dir() -> pathlib.Path:
  """$SEVLM_GPT2_BPE_DIR if set; else the copy an installed wheel ships (sevlm_jax/_gpt2_bpe/,
  see setup.cfg); else third_party/gpt2_bpe/ of this checkout."""
  return io_utils.vendored_dir(BPE_DIR_ENV, "gpt2_bpe")


def _check_bpe_files(bpe_dir: pathlib.Path) -> None:
  for name, want in BPE_FILES.items():
    path = bpe_dir / name
    if not path.is_file():
      raise FileNotFoundError(
          f"GPT-2 BPE file {path} not found. It is vendored under third_party/gpt2_bpe/ of the "
          f"sevlm_jax repository; point ${BPE_DIR_ENV} at a folder holding encoder.json and vocab.bpe.")
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want:
      raise ValueError(f"{path} has sha256 {got}, expected {want} (OpenAI's GPT-2 file); "
                       "replace it with the original file.")


class Tokenizer:
  """GPT-2 BPE with SEVLM's added tokens; see the module docstring."""

  def __init__(self, bpe_dir: pathlib.Path):
    self.bpe_dir = pathlib.Path(bpe_dir)
    _check_bpe_files(self.bpe_dir)
    bpe = models.BPE.from_file(str(self.bpe_dir / "encoder.json"), str(self.bpe_dir / "vocab.bpe"))
    self._bpe = tokenizers.Tokenizer(bpe)
    self._bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    self._bpe.decoder = decoders.ByteLevel()
    if self._bpe.get_vocab_size() != vocab.GPT2_VOCAB_SIZE:
      raise ValueError(f"{self.bpe_dir}: expected {vocab.GPT2_VOCAB_SIZE} BPE entries, "
                       f"got {self._bpe.get_vocab_size()}")
    self.vocab_size = vocab.VOCAB_SIZE
    self.prompt_ids = [vocab.BOS_ID] + self.encode(vocab.PROMPT)
    because = self.encode(vocab.BECAUSE)
    if len(because) != 1:
      raise ValueError(f"{vocab.BECAUSE!r} should be one BPE token, got {because}")
    self.because_id = because[0]

  def __reduce__(self):
    # Worker processes reload from the files (cached per process) instead of pickling 1.5 MB.
    return (load_tokenizer, (str(self.bpe_dir),))

  def encode(self, text: str) -> list[int]:
    """Plain GPT-2 BPE ids of `text` (no normalisation, no control tokens)."""
    return self._bpe.encode(text, add_special_tokens=False).ids

  def decode(self, ids, skip_special: bool = True) -> str:
    """Text of `ids`. Control ids (<|endoftext|>, <pad>, ...) are dropped, or written by name."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    pieces, run = [], []
    for i in ids:
      if i < vocab.BOS_ID:
        run.append(i)
        continue
      if i >= vocab.VOCAB_SIZE or i < 0:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {vocab.VOCAB_SIZE})")
      if run:
        pieces.append(self._bpe.decode(run, skip_special_tokens=False))
        run = []
      if not skip_special:
        pieces.append(_SPECIAL_NAMES[i])
    if run:
      pieces.append(self._bpe.decode(run, skip_special_tokens=False))
    return "".join(pieces)

  def token_text(self, token_id: int) -> str:
    """The text one token stands for (BPE space marker turned back into a space)."""
    if token_id >= vocab.BOS_ID:
      return _SPECIAL_NAMES[token_id]
    return self._bpe.decode([token_id], skip_special_tokens=False)

  @functools.lru_cache(maxsize=64)
  def emotion_part(self, emotion: str) -> tuple[int, ...]:
    """Ids of "<bos> the emotion is {emotion}" (the emotion segment)."""
    return tuple(self.prompt_ids + self.encode(" " + normalize_text(emotion)))

  def explanation_part(self, explanation: str) -> list[int]:
    """Ids of " because {explanation}<eos>" (the explanation segment)."""
    text = normalize_text(explanation)
    body = self.encode(" " + text) if text else []
    return [self.because_id] + body + [vocab.EOS_ID]

  def build_sequence(self, emotion, explanation: str, max_len: int) -> dict[str, np.ndarray]:
    """Training arrays for one (emotion, explanation) annotation, each int32[max_len].

    input_ids  : ids, right-padded with PAD_ID.
    segment_ids: EMOTION_SEGMENT_ID / EXPLANATION_SEGMENT_ID on real tokens, PAD_ID on padding.
    token_mask : 1 on real tokens, 0 on padding.
    labels     : input_ids where a token is a prediction target (every real token but <bos>),
                 -1 elsewhere. The loss shifts: logits at t-1 predict labels at t.
    `emotion` is a name ("awe") or an index into EMOTIONS.
    """
    if isinstance(emotion, (int, np.integer)):
      emotion = vocab.EMOTIONS[int(emotion)]
    emo = list(self.emotion_part(emotion))
    exp = self.explanation_part(explanation)
    ids = (emo + exp)[:max_len]
    segs = ([vocab.EMOTION_SEGMENT_ID] * len(emo) + [vocab.EXPLANATION_SEGMENT_ID] * len(exp))[:max_len]
    n = len(ids)
    input_ids = np.full((max_len,), vocab.PAD_ID, np.int32)
    segment_ids = np.full((max_len,), vocab.PAD_ID, np.int32)
    token_mask = np.zeros((max_len,), np.int32)
    labels = np.full((max_len,), -1, np.int32)
    input_ids[:n] = ids
    segment_ids[:n] = segs
    token_mask[:n] = 1
    labels[1:n] = input_ids[1:n]
    return {"input_ids": input_ids, "segment_ids": segment_ids, "token_mask": token_mask, "labels": labels}


@functools.lru_cache(maxsize=4)
def _load(bpe_dir: str) -> Tokenizer:
  return Tokenizer(pathlib.Path(bpe_dir))


def load_tokenizer(bpe_dir=None) -> Tokenizer:
  """The project's tokenizer (cached per process). `bpe_dir` defaults to `default_bpe_dir()`."""
  return _load(str(pathlib.Path(bpe_dir or default_bpe_dir()).resolve()))
