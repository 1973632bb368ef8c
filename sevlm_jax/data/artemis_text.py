"""ArtEmis's text preprocessing for deep nets: the text the SEVLM authors trained on.

The public SEVLM data is the output of ArtEmis's `preprocess_artemis_data.py
--preprocess-for-deep-nets True`: its `utterance_spelled` column, after two row filters. This
module does the same to one utterance at a time, in ArtEmis's order:

  1. a whole-sentence correction table (exact match on the raw utterance, surrounding spaces
     included), then lowercasing;
  2. a quote around a single word is blanked ('king' -> " king ");
  3. contractions expanded by ArtEmis's table, matched anywhere (no word boundaries, as there);
  4. the characters . ? ! , : ; / \\ - ~ * _ = [ – ] { } $ ^ @ | % # < — > become spaces;
  5. NLTK word_tokenize (treebank.py: the same tokens, offline);
  6. a token correction table (a token may become several), then SymSpell on every token that
     is neither a GloVe word nor in ArtEmis's list of real words GloVe lacks: the closest
     dictionary term (edit distance <= 2, ties by frequency), or the token itself if none;
  7. the text is the tokens joined by single spaces; its length is their number.

Row filters (drop_by_length, which prepare.py runs once the split is known): fewer than 5
tokens, or more than the 95th percentile (numpy's linear interpolation) of the token counts of
the train split. preprocess_text runs the pipeline over every annotation read ('artemis'), or
only strips the utterances ('raw').

The word lists and tables are ArtEmis's own files (third_party/artemis, MIT), checked by sha256.
Loading SymSpell's dictionary takes seconds, so it happens once per process, and every distinct
token is corrected once.
"""

import functools
import hashlib
import json
import pathlib
import re

import numpy as np

from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import dominant
from sevlm_jax.data import treebank
from sevlm_jax import errors
from sevlm_jax.errors import InputError

PREPROCESSINGS = ("artemis", "raw")
TOO_SHORT = 5  # fewer tokens than this: dropped
TOO_LONG_PERCENTILE = 95  # more tokens than this percentile of the train split: dropped

FILES = {
    "symspell_frequency_dictionary_en_82_765.txt":
        "43223aa83b55519851d5c93baf96f7843e5f5410f2623a9ce263409ab50314b2",
    "glove.6B.100d.vocabulary.txt": "e728463e20c0378bf1252982f49eae9b65b3ff4d9356f85cf66c1549c25d0e68",
    "spelling.json": "e75fea81d214efed3cdf12c13bf40f8807ba12bbc8aa8839e9a74594fcbf40c6",
}
DIR_ENV = "SEVLM_ARTEMIS_DATA_DIR"

# ArtEmis maps these to spaces before tokenizing ('\\-' in its string is a backslash and a hyphen).
_PUNCTUATION = ".?!,:;/\\-~*_=[–]{}$^@|%#<—>"
_TO_SPACE = str.maketrans(_PUNCTUATION, " " * len(_PUNCTUATION))
# A word between quotes (its class holds '|' too, as ArtEmis's does): the quotes become spaces.
_QUOTED_WORD = re.compile(r"""['|"]\w+['|"]""")
# SymSpell as ArtEmis built it: SymSpell() keeps the defaults (edit distance 2, prefix 7).
_MAX_EDIT_DISTANCE = 2


def default_dir() -> pathlib.Path:
  """$SEVLM_ARTEMIS_DATA_DIR if set; else the wheel's sevlm_jax/_artemis/; else third_party/artemis/."""
  return io_utils.vendored_dir(DIR_ENV, "artemis")


def _read_checked(folder: pathlib.Path, name: str) -> bytes:
  path = folder / name
  if not path.is_file():
    raise FileNotFoundError(f"ArtEmis word list {path} not found. It is vendored under "
                            f"third_party/artemis/ of the sevlm_jax repository; point ${DIR_ENV} at "
                            "a folder holding " + ", ".join(FILES))
  data = path.read_bytes()
  got = hashlib.sha256(data).hexdigest()
  if got != FILES[name]:
    raise ValueError(f"{path} has sha256 {got}, expected {FILES[name]} (ArtEmis's file); replace it "
                     "with the original file")
  return data


class Preprocessor:
  """ArtEmis's utterance -> tokens, with every distinct token's correction remembered."""

  def __init__(self, folder: pathlib.Path | None = None):
    symspellpy = errors.optional_import(  # only preparation with text_preprocessing='artemis' does
        "symspellpy", "ArtEmis's text preprocessing (text_preprocessing='artemis')")

    folder = pathlib.Path(folder) if folder is not None else default_dir()
    tables = json.loads(_read_checked(folder, "spelling.json"))
    self.sentence_spelling: dict = tables["sentence_spelling"]
    self.token_spelling: dict = tables["token_spelling"]
    contractions: dict = tables["contractions"]
    self._contractions = contractions
    # Alternation in the table's order, case-insensitive, no boundaries: ArtEmis's expression.
    self._contraction_re = re.compile("|".join(contractions), re.IGNORECASE | re.DOTALL)
    glove = _read_checked(folder, "glove.6B.100d.vocabulary.txt").decode("utf-8")
    self.known_words = {line.split()[0] for line in glove.splitlines() if line.strip()}
    self.known_words.update(tables["missing_from_glove_but_are_actual_words"])
    self._speller = symspellpy.SymSpell(max_dictionary_edit_distance=_MAX_EDIT_DISTANCE)
    dictionary = "symspell_frequency_dictionary_en_82_765.txt"
    _read_checked(folder, dictionary)  # its sha256, like the other lists
    self._speller.load_dictionary(str(folder / dictionary), term_index=0, count_index=1,
                                  encoding="utf-8")
    self._closest = symspellpy.Verbosity.CLOSEST
    self._corrected: dict[str, str] = {}

  def _expand(self, match: re.Match) -> str:
    found = match.group(0)
    return self._contractions.get(found, self._contractions.get(found.lower(), found)).lower()

  def clean_text(self, utterance: str) -> str:
    """Steps 1-4: the text NLTK tokenizes."""
    text = self.sentence_spelling.get(utterance, utterance).lower()
    chars = list(text)
    for match in _QUOTED_WORD.finditer(text):
      chars[match.start()] = chars[match.end() - 1] = " "
    text = self._contraction_re.sub(self._expand, "".join(chars))
    return text.translate(_TO_SPACE)

  def correct(self, token: str) -> str:
    """Step 6's automatic part for one token (memoised)."""
    out = self._corrected.get(token)
    if out is None:
      if token in self.known_words:
        out = token
      else:
        # ArtEmis calls lookup(token, 1): 1 lands in the verbosity argument and the distance
        # defaults to the dictionary's 2; the first suggestion is the same as CLOSEST's.
        found = self._speller.lookup(token, self._closest, max_edit_distance=_MAX_EDIT_DISTANCE)
        out = found[0].term if found else token
      self._corrected[token] = out
    return out

  def tokens(self, utterance: str) -> list[str]:
    """The spelled tokens of one raw utterance (steps 1-6)."""
    out = []
    for token in treebank.tokenize(self.clean_text(utterance)):
      fixed = self.token_spelling.get(token, token)
      out.extend(fixed if isinstance(fixed, list) else [fixed])
    return [self.correct(t) for t in out]

  def __call__(self, utterance: str) -> tuple[str, int]:
    """(utterance_spelled, its token count) of one raw utterance."""
    tokens = self.tokens(utterance)
    return " ".join(tokens), len(tokens)


@functools.lru_cache(maxsize=1)
def preprocessor() -> Preprocessor:
  """The process's Preprocessor over the vendored files (loaded once: SymSpell takes seconds)."""
  return Preprocessor()


def length_bounds(train_token_counts) -> tuple[int, float]:
  """(shortest kept, longest kept) token counts: ArtEmis keeps TOO_SHORT <= n <= the train
  split's TOO_LONG_PERCENTILE-th percentile."""
  counts = np.asarray(list(train_token_counts), np.float64)
  if counts.size == 0:
    raise ValueError("no training utterance to take the length percentile of")
  return TOO_SHORT, float(np.percentile(counts, TOO_LONG_PERCENTILE))


def preprocess_text(paintings: dict, mode: str, progress: bool = True) -> None:
  """The text of every annotation of annotations.Painting's: surrounding space stripped ('raw') or
  ArtEmis's spelled tokens joined by spaces, with their count in Painting.token_counts ('artemis')."""
  if mode not in PREPROCESSINGS:
    raise ValueError(f"unknown text preprocessing {mode!r}; expected one of "
                     f"{', '.join(PREPROCESSINGS)}")
  if mode == "raw":
    for p in paintings.values():
      p.utterances = [u.strip() for u in p.utterances]
    return
  spell = preprocessor()
  total = sum(len(p.utterances) for p in paintings.values())
  with io_utils.Progress("ArtEmis text", total=total, unit="row", enabled=progress) as bar:
    for p in paintings.values():
      done = [spell(u) for u in p.utterances]
      p.utterances = [text for text, _ in done]
      p.token_counts = [n for _, n in done]
      bar.update(len(done))


def drop_by_length(paintings: dict, report) -> dict:
  """ArtEmis's length filters, after preprocess_text(..., 'artemis') and the split.

  Drops annotations under TOO_SHORT tokens or over the TOO_LONG_PERCENTILE-th percentile of
  the train split's token counts (every split, 'rest' included, as ArtEmis does), each counted
  in `report` (an annotations.Report) with its file, line and text; a row both too short and too
  long (a percentile under 5) counts as too short. Before that, a painting's emotion histogram is taken over all its annotations,
  as ArtEmis's image-emotion-histogram.csv (the public SEVLM JSON's
  origin_emotion_distribution) is, so the dominant emotion does not move with the text filters.
  Returns the bounds for the data set's meta.
  """
  train = [n for p in paintings.values() if p.split == "train" for n in p.token_counts]
  if not train:
    raise InputError("no training annotation to take ArtEmis's 95th length percentile of; "
                     "give more paintings or set data.text_preprocessing='raw'")
  shortest, longest = length_bounds(train)
  for p in paintings.values():
    if p.histogram is None and p.emotions:
      p.histogram = dominant.histogram_from_counts(np.bincount(p.emotions, minlength=vocab.NUM_EMOTIONS))
    keep = []
    for k, n in enumerate(p.token_counts):
      reason = ("too_short_utterance" if n < shortest else
                "too_long_utterance" if n > longest else None)
      if reason is None:
        keep.append(k)
        continue
      file, line = p.sources[k]
      report.skip(reason, file=file, line=line, image_id=p.image_id, split=p.split, tokens=n,
                  text=p.utterances[k])
    p.emotions, p.utterances, p.sources, p.token_counts = (
        [values[k] for k in keep] for values in (p.emotions, p.utterances, p.sources, p.token_counts))
  return {"min_tokens": shortest, "max_tokens": longest,
          "max_tokens_rule": f"{TOO_LONG_PERCENTILE}th percentile of the train split's token counts"}
