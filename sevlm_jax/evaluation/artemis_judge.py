"""EA read by ArtEmis's own judge (`judge.source=artemis`; README.md, "Metrics").

The paper's EA is ArtEmis's `emotional_alignment` (evaluation/single_caption_per_image.py, the
same in the public SEVLM code): each generated explanation is split on whitespace, numbered by
ArtEmis's Vocabulary (unknown words as <unk>), and read by ArtEmis's released text-to-emotion
classifier in chunks of 1000 texts (`text_to_emotion`); its argmax is the explanation's emotion.
This judge does the same with the classifier restated in Flax (models/artemis_text_clf.py) and
its files read without PyTorch (weights/artemis_clf.py), chunk by chunk, so that the logits are
ArtEmis's (its 'max' pooling depends on the longest text of each chunk).

There is no held-out accuracy of ours for this judge: its authors report about 63% (9-way) on
ArtEmis's test split. An explanation with no words, which ArtEmis's code stops on, reads as
all-zero LSTM features.

    judge = ArtemisJudge.load("best_model.pt", "vocabulary.pkl")
    emotion_ids = judge.predict(explanations)          # int32[N], indices into EMOTIONS
"""

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sevlm_jax.errors import CheckpointError, ConfigError
from sevlm_jax.models import artemis_text_clf
from sevlm_jax.vocab import NUM_EMOTIONS
from sevlm_jax.weights import artemis_clf

SOURCES = ("trained", "artemis")
CHUNK = 1000  # texts per classifier call in ArtEmis's text_to_emotion
ARTEMIS_NOTE = ("ArtEmis's released classifier: no held-out accuracy of ours; its authors report "
                "about 63% (9-way) on ArtEmis's test split")


def source_of(judge_config) -> str:
  """judge.source, "trained" for configs written before the field existed."""
  return judge_config.get("source", "trained")


def check_config(judge_config: ml_collections.ConfigDict) -> None:
  """judge.source names a judge, and with artemis both of ArtEmis's files are given and exist."""
  source = source_of(judge_config)
  if source not in SOURCES:
    raise ConfigError(f"judge.source={source!r}: choose one of {', '.join(SOURCES)}")
  if source != "artemis":
    return
  for field, what in (("artemis_classifier", artemis_clf.CLASSIFIER), ("artemis_vocabulary", artemis_clf.VOCABULARY)):
    path = judge_config.get(field, "")
    if not path:
      raise ConfigError(f"judge.source=artemis needs judge.{field}: the path of {what} (README, \"Metrics\")")
    if not os.path.isfile(path):
      raise ConfigError(f"judge.{field}={path}: no such file; give the path of {what} (README, \"Metrics\")")


@functools.lru_cache(maxsize=4)
def _logits_fn(spec: artemis_text_clf.ArtemisClfSpec):
  model = artemis_text_clf.ArtemisTextClassifier(spec)
  return jax.jit(lambda variables, ids, lengths, chunk_len: model.apply(variables, ids, lengths, chunk_len))


def _round_up(n: int, multiple: int) -> int:
  return -(-max(n, 1) // multiple) * multiple


@dataclasses.dataclass
class ArtemisJudge:
  """ArtEmis's classifier and vocabulary, with the paths they were read from."""
  spec: artemis_text_clf.ArtemisClfSpec
  variables: Any
  vocab: artemis_clf.ArtemisVocabulary
  classifier_path: str
  vocabulary_path: str
  chunk: int = CHUNK
  heldout_accuracy: float | None = None  # none of ours (see ARTEMIS_NOTE)

  @classmethod
  def load(cls, classifier_path: str | os.PathLike, vocabulary_path: str | os.PathLike) -> "ArtemisJudge":
    spec, variables, eos = artemis_clf.load_classifier(classifier_path)
    vocab = artemis_clf.load_vocabulary(vocabulary_path)
    if len(vocab.word2idx) != spec.vocab_size or (eos is not None and eos != vocab.eos):
      raise CheckpointError(
          f"{vocabulary_path}: {len(vocab.word2idx)} words with <eos> {vocab.eos}, but {classifier_path} embeds "
          f"{spec.vocab_size} words with <eos> {eos}: the two files do not belong together")
    return cls(spec, jax.tree.map(jnp.asarray, variables), vocab, os.path.abspath(classifier_path),
               os.path.abspath(vocabulary_path))

  @classmethod
  def from_config(cls, judge_config) -> "ArtemisJudge":
    check_config(judge_config)
    return cls.load(judge_config.artemis_classifier, judge_config.artemis_vocabulary)

  def describe(self) -> dict[str, Any]:
    """What the metrics file records of the judge."""
    return {"source": "artemis", "classifier": self.classifier_path, "vocabulary": self.vocabulary_path,
            "note": ARTEMIS_NOTE}

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Word ids int32[N, longest] (<pad> after each text) and lengths int32[N], as EA encodes."""
    words = [t.split() for t in texts]
    lengths = np.array([len(w) for w in words], np.int32)
    ids = np.full((len(words), max(lengths.max(initial=0), 1)), self.vocab.pad, np.int32)
    for n, w in enumerate(words):
      ids[n, :len(w)] = self.vocab.ids(w)
    return ids, lengths

  def logits(self, texts: Sequence[str]) -> np.ndarray:
    """Emotion logits float32[N, 9] of each text (columns in ArtEmis's order, which is EMOTIONS')."""
    ids, lengths = self.encode(texts)
    out = np.zeros((len(texts), NUM_EMOTIONS), np.float32)
    fn = _logits_fn(self.spec)
    for start in range(0, len(texts), self.chunk):
      stop = min(start + self.chunk, len(texts))
      chunk_len = int(lengths[start:stop].max())
      # Padded to few shapes (rows to a power of two, words to a multiple of 8): one compilation
      # serves many chunks; padded rows and positions past chunk_len change no real row.
      rows = min(self.chunk, max(8, 1 << (stop - start - 1).bit_length()))
      width = _round_up(chunk_len, 8)
      ids_b = np.full((rows, width), self.vocab.pad, np.int32)
      cols = min(width, ids.shape[1])
      ids_b[:stop - start, :cols] = ids[start:stop, :cols]
      lengths_b = np.zeros((rows,), np.int32)
      lengths_b[:stop - start] = lengths[start:stop]
      got = fn(self.variables, ids_b, lengths_b, np.int32(chunk_len))
      out[start:stop] = np.asarray(got, np.float32)[:stop - start]
    return out

  def predict(self, texts: Sequence[str]) -> np.ndarray:
    """Most likely emotion index int32[N] of each text."""
    if not len(texts):
      return np.zeros((0,), np.int32)
    return np.argmax(self.logits(texts), axis=-1).astype(np.int32)
