"""data.vad_lookup=wordnet_pos: the public code's VAD rule, with NLTK's tagger and WordNet.

The public rule (utils/get_VADfeature.py and utils/get_wordBase.py of BetterZH/SEVLM-code), for
one training sequence:
  1. its GPT-2 tokens as strings with the BPE space marker 'Ġ' removed, control tokens by name
     ('<|endoftext|>' for <bos> and <eos>, '<pad>' for the padding up to max_len), are one
     "sentence" given to nltk.pos_tag (the averaged perceptron tagger);
  2. each token string is lemmatised by WordNet's lemmatiser with its tag mapped to a WordNet part
     of speech (`wordnet_pos`: J adjective, V verb, N noun, R adverb, anything else noun);
  3. the lemma is looked up in the lexicon exactly as it is (no lowercasing, so 'Colors' is not
     found): its VAD, else [0, 0, 0]. A word the lexicon lacks, or a lemma other than the listed
     form, gets zeros; WordNet returns a word it does not know unchanged.

A token's VAD there depends on its sentence; here the model reads one VAD per token from a
(vocab x 3) table, in training and in jitted decoding alike. So `token_vad_table` applies the rule
to every training sequence (the public code's own input) and gives each token the lemma it got
most often over its occurrences (ties: the one met first); a token that never occurs in training
text, or every token when no training text is at hand (the authors' weights loaded without
ArtEmis), gets the lemma of the token tagged alone. `TableStats.same_vad` counts the training
positions whose per-context VAD the table reproduces: what the table loses against the public
rule, measured on the run's own data (recorded in the workdir's vad_table.json).

NLTK and its two data packages are optional: without them this stops with one line saying how
to get them (DOWNLOAD_COMMAND).
"""

import collections
import dataclasses
import functools
import json
from typing import Callable, Iterable, NamedTuple

import numpy as np

from sevlm_jax import errors
from sevlm_jax import vocab

NEEDED_FOR = "data.vad_lookup=wordnet_pos"
# The data package names of NLTK >= 3.9 (the floor of the `wordnet` extra in setup.cfg).
DATA_PACKAGES = ("wordnet", "averaged_perceptron_tagger_eng")
DOWNLOAD_COMMAND = "python -m nltk.downloader " + " ".join(DATA_PACKAGES)
BPE_SPACE = "Ġ"  # GPT-2's byte-level marker of a leading space, removed by the public code
_NOUN, _VERB, _ADJ, _ADV = "n", "v", "a", "r"  # WordNet's part-of-speech letters


class Nltk(NamedTuple):
  """The two NLTK functions the rule uses (tests pass stand-ins)."""
  tag: Callable[[list[str]], list[tuple[str, str]]]  # nltk.pos_tag
  lemmatize: Callable[[str, str], str]  # WordNetLemmatizer().lemmatize(word, pos)


@dataclasses.dataclass
class TableStats:
  """How the table was made, and how closely it gives the per-context rule's VAD."""
  sequences: int = 0  # training sequences tagged
  positions: int = 0  # their token positions that are not control tokens
  same_vad: int = 0  # positions whose per-context VAD the table gives
  vad_positions: int = 0  # positions with a non-zero VAD per context or in the table
  same_vad_of_those: int = 0
  tagged_alone: int = 0  # tokens never met in training text: tagged alone

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def wordnet_pos(treebank_tag: str) -> str:
  """WordNet's part of speech for a Penn Treebank tag, as the public code's get_wordnet_pos:
  by its first letter, and noun for any other tag (punctuation, determiners, ...)."""
  return {"J": _ADJ, "V": _VERB, "N": _NOUN, "R": _ADV}.get(treebank_tag[:1], _NOUN)


def missing_data_message() -> str:
  return (f"{NEEDED_FOR} needs NLTK's WordNet and tagger data, which are not installed here; "
          f"fetch them once with: {DOWNLOAD_COMMAND}")


@functools.lru_cache(maxsize=1)
def load_nltk() -> Nltk:
  """NLTK's pos_tag and WordNet lemmatiser, checked to work; MissingDependencyError (one line)
  without the nltk package or without its data."""
  nltk = errors.optional_import("nltk", NEEDED_FOR)
  stem = errors.optional_import("nltk.stem", NEEDED_FOR)
  lemmatizer = stem.WordNetLemmatizer()
  try:  # both load their data on first use: fail now, with the command, not in the middle
    nltk.pos_tag(["paintings"])
    lemmatizer.lemmatize("paintings", _NOUN)
  except LookupError:
    raise errors.MissingDependencyError(missing_data_message()) from None
  return Nltk(tag=nltk.pos_tag, lemmatize=functools.lru_cache(maxsize=None)(lemmatizer.lemmatize))


def token_strings(tokenizer) -> list[str]:
  """Per token id: the string the public code tags, GPT-2's byte-level token with 'Ġ' removed
  (from encoder.json, as transformers' tokenizer holds it), control tokens by name."""
  with open(tokenizer.bpe_dir / "encoder.json", encoding="utf-8") as f:
    encoder = json.load(f)
  strings = [""] * vocab.VOCAB_SIZE
  for text, token_id in encoder.items():
    strings[token_id] = text.replace(BPE_SPACE, "")
  for i, name in enumerate(vocab.ADDED_TOKENS):
    strings[vocab.GPT2_VOCAB_SIZE + i] = name
  return strings


def context_lemmas(words: list[str], nltk: Nltk) -> list[str]:
  """The lemma of each word of one sentence: WordNet's, with the POS its tag in the sentence
  gives (steps 1-2 of the module docstring)."""
  return [nltk.lemmatize(word, wordnet_pos(tag)) for word, tag in nltk.tag(words)]


def lemma_vad(lemma: str, lexicon) -> np.ndarray:
  """Step 3: the lexicon's VAD of the lemma as it is, else zeros."""
  vad = lexicon.entries.get(lemma)
  return np.zeros(3, np.float32) if vad is None else vad


def sequence_vad(ids: Iterable[int], strings: list[str], lexicon, nltk: Nltk) -> np.ndarray:
  """float32[len(ids), 3]: the public rule's VAD of every position of one sequence."""
  lemmas = context_lemmas([strings[int(i)] for i in ids], nltk)
  return np.stack([lemma_vad(lemma, lexicon) for lemma in lemmas]).astype(np.float32)


def token_vad_table(tokenizer, lexicon, sequences: Iterable[np.ndarray] = (),
                    nltk: Nltk | None = None) -> tuple[np.ndarray, TableStats]:
  """(float32[VOCAB_SIZE, 3], stats): each token's VAD by the public rule, its lemma the one its
  contexts in `sequences` (int token ids, as training builds them) gave it most often; see the
  module docstring. Rows of control tokens are zero."""
  nltk = nltk or load_nltk()
  strings = token_strings(tokenizer)
  lemmas_of = collections.defaultdict(collections.Counter)  # token id -> Counter of its lemmas
  tagged = []  # (ids, lemmas) of every sequence, to measure the table against them
  for ids in sequences:
    ids = [int(i) for i in ids]
    lemmas = context_lemmas([strings[i] for i in ids], nltk)
    tagged.append((ids, lemmas))
    for i, lemma in zip(ids, lemmas):
      if i < vocab.BOS_ID:
        lemmas_of[i][lemma] += 1
  table = np.zeros((vocab.VOCAB_SIZE, 3), np.float32)
  stats = TableStats(sequences=len(tagged))
  for i in range(vocab.BOS_ID):
    if lemmas_of[i]:
      lemma = lemmas_of[i].most_common(1)[0][0]
    else:
      stats.tagged_alone += 1
      lemma = context_lemmas([strings[i]], nltk)[0]
    table[i] = lemma_vad(lemma, lexicon)
  for ids, lemmas in tagged:
    for i, lemma in zip(ids, lemmas):
      if i >= vocab.BOS_ID:
        continue
      per_context = lemma_vad(lemma, lexicon)
      same = bool(np.array_equal(per_context, table[i]))
      stats.positions += 1
      stats.same_vad += same
      if per_context.any() or table[i].any():
        stats.vad_positions += 1
        stats.same_vad_of_those += same
  return table, stats
