"""Word-level valence/arousal/dominance lexicons and the per-token VAD table.

Every lexicon is mapped to the -1..1 scale:

  format           file                                   delimiter  source scale  mapping
  nrc_v1           NRC-VAD-Lexicon.txt (2018)             tab        0..1          2x - 1
  nrc_v1_bipolar   NRC-VAD v1 BipolarScale folder         tab        -1..1         x
  nrc_v2           NRC-VAD-Lexicon-v2.1.txt (2025)        tab        -1..1         x
  warriner         Warriner et al. (2013) style CSV norms comma      1..9          (x - 5) / 4
  auto             delimiter from the file, scale from the value range
                   (any value < 0: -1..1; any value > 1: 1..9; else 0..1)

A header row is optional and recognised by its non-numeric value fields. In a
header, the word column is the one named word/term/lemma and the value columns
are found by name (valence / V.Mean.Sum, arousal / A.Mean.Sum, dominance /
D.Mean.Sum), so Warriner's file with its leading index column works as is.
Without a header the columns are word, valence, arousal, dominance. Lines
starting with '#' are comments. Words are lowercased; a repeated word keeps
its first entry.

NRC-VAD's licence forbids redistribution: users supply their own copy. The
project ships only its own small lexicon (assets/demo_vad_lexicon.tsv).

Token lookup (`token_vad_table`): the token's text with the BPE space marker
removed, stripped and lowercased; the word if listed, else its lemma
(simplemma, English, offline), else [0, 0, 0]. Control tokens get [0, 0, 0].
lookup="lemma_only" looks up only the lemma, as the public code does
(utils/get_VADfeature.py), so an inflected form the lexicon lists ("loved")
gets its lemma's values or zeros; simplemma's context-free lemma stands in for
the public code's WordNet lemma of the word's tagged part of speech, and it errs
towards the verb or noun stem ("painting" -> "paint", "interesting" ->
"interest", where WordNet keeps a noun or adjective as it is).
lookup="wordnet_pos" is the public rule itself, with NLTK's tagger and WordNet
(optional; vad_wordnet.py, which also says how a per-context rule becomes this
one-value-per-token table).
The (vocab x 3) table is cached on disk, keyed by the lexicon file's sha256 and
the lookup rule.
"""

import csv
import dataclasses
import hashlib
import io
import os
import pathlib

import numpy as np
import simplemma

from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import vad_wordnet
from sevlm_jax.errors import InputError

FORMATS = ("auto", "nrc_v1", "nrc_v1_bipolar", "nrc_v2", "warriner")
_FORMAT_SCALE = {"nrc_v1": "0..1", "nrc_v1_bipolar": "-1..1", "nrc_v2": "-1..1", "warriner": "1..9"}
_FORMAT_DELIMITER = {"nrc_v1": "\t", "nrc_v1_bipolar": "\t", "nrc_v2": "\t", "warriner": ","}
_WORD_COLUMNS = ("word", "term", "lemma", "words", "terms")
_VALUE_COLUMNS = {
    "valence": ("valence", "v.mean.sum", "v_mean_sum", "v.mean", "val"),
    "arousal": ("arousal", "a.mean.sum", "a_mean_sum", "a.mean", "aro"),
    "dominance": ("dominance", "d.mean.sum", "d_mean_sum", "d.mean", "dom"),
}
# Bump when the lookup rule changes, so cached tables are recomputed.
_TABLE_VERSION = f"v1-simplemma{getattr(simplemma, '__version__', '')}"
LOOKUPS = ("word_then_lemma", "lemma_only", "wordnet_pos")
_WORD_LOOKUPS = ("word_then_lemma", "lemma_only")  # rules of a word alone (VadLexicon.lookup)

ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "assets"
DEMO_LEXICON_PATH = ASSETS_DIR / "demo_vad_lexicon.tsv"


@dataclasses.dataclass(frozen=True)
class VadLexicon:
  """word -> float32[3] (valence, arousal, dominance) on the -1..1 scale."""
  entries: dict
  source: str = "<memory>"
  format: str = "custom"
  scale: str = "-1..1"
  sha256: str | None = None  # of the file it was read from; keys the on-disk table cache
  duplicates: int = 0

  def __len__(self):
    return len(self.entries)

  def lookup(self, word: str, rule: str = "word_then_lemma") -> np.ndarray:
    """VAD of `word` (lowercased), else of its lemma, else zeros; rule="lemma_only": of its
    lemma, else zeros (the public code's rule)."""
    if rule not in _WORD_LOOKUPS:
      raise ValueError(f"VAD lookup rule of a word alone must be one of {_WORD_LOOKUPS}, got "
                       f"{rule!r} (wordnet_pos needs the word's sentence: vad_wordnet.py)")
    w = word.strip().lower()
    if not w:
      return np.zeros(3, np.float32)
    if rule == "word_then_lemma" and w in self.entries:
      return self.entries[w]
    lemma = lemmatize(w)
    if lemma in self.entries:
      return self.entries[lemma]
    return np.zeros(3, np.float32)


def lemmatize(word: str) -> str:
  """English lemma of a lowercase word (simplemma; the word itself when unknown)."""
  return simplemma.lemmatize(word, lang="en").lower() if word else word


def rescale(values: np.ndarray, scale: str) -> np.ndarray:
  """Map values on `scale` ('0..1', '-1..1' or '1..9') to -1..1."""
  if scale == "0..1":
    return 2.0 * values - 1.0
  if scale == "-1..1":
    return values
  if scale == "1..9":
    return (values - 5.0) / 4.0
  raise ValueError(f"unknown scale {scale!r}; expected '0..1', '-1..1' or '1..9'")


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _sniff_delimiter(lines: list[str]) -> str:
  first = lines[0] if lines else ""
  return "\t" if "\t" in first else ","


def _columns_from_header(header: list[str], path) -> tuple[int, int, int, int]:
  names = [h.strip().lower() for h in header]

  def find(options, what):
    for opt in options:
      if opt in names:
        return names.index(opt)
    raise InputError(f"{path}: header {header} has no {what} column (looked for {', '.join(options)}); "
                     "pass a file with word/valence/arousal/dominance columns")

  return (find(_WORD_COLUMNS, "word"), find(_VALUE_COLUMNS["valence"], "valence"),
          find(_VALUE_COLUMNS["arousal"], "arousal"), find(_VALUE_COLUMNS["dominance"], "dominance"))


def parse_lexicon(text: str, *, fmt: str = "auto", source: str = "<memory>",
                  sha256: str | None = None) -> VadLexicon:
  """Parse lexicon text (see the module docstring for formats)."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown lexicon format {fmt!r}; expected one of {', '.join(FORMATS)}")
  lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
  if not lines:
    raise InputError(f"{source}: no lexicon entries found")
  delimiter = _sniff_delimiter(lines)
  if fmt != "auto" and delimiter != _FORMAT_DELIMITER[fmt]:
    names = {"\t": "tab", ",": "comma"}
    raise InputError(f"{source}: format {fmt!r} expects {names[_FORMAT_DELIMITER[fmt]]}-separated "
                     f"lines, but the file looks {names[delimiter]}-separated; pick the right format "
                     f"(one of {', '.join(FORMATS)})")
  rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
  header = rows[0]
  has_header = not (len(header) >= 4 and all(_is_number(x) for x in header[1:4]))
  if has_header:
    cols = _columns_from_header(header, source)
    rows = rows[1:]
  else:
    cols = (0, 1, 2, 3)
  words, values = [], []
  for n, row in enumerate(rows, start=2 if has_header else 1):
    try:
      word = row[cols[0]].strip().lower()
      vad = [float(row[c]) for c in cols[1:]]
    except (IndexError, ValueError) as e:
      raise InputError(f"{source}: entry {n} ({delimiter.join(row)!r}) is not 'word, valence, arousal, "
                       f"dominance' ({e}); fix or delete that line") from None
    if word:
      words.append(word)
      values.append(vad)
  values = np.asarray(values, np.float64).reshape(-1, 3)
  if fmt == "auto":
    if values.min() < 0:
      scale = "-1..1"
    elif values.max() > 1:
      scale = "1..9"
    else:
      scale = "0..1"
    described = f"auto({scale})"
  else:
    scale, described = _FORMAT_SCALE[fmt], fmt
  lo, hi = {"0..1": (0, 1), "-1..1": (-1, 1), "1..9": (1, 9)}[scale]
  if values.min() < lo - 1e-6 or values.max() > hi + 1e-6:
    raise InputError(f"{source}: values range over [{values.min()}, {values.max()}], outside the {scale} "
                     f"scale of format {fmt!r}; pick the right format (one of {', '.join(FORMATS)})")
  values = rescale(values, scale).astype(np.float32)
  entries, duplicates = {}, 0
  for word, vad in zip(words, values):
    if word in entries:
      duplicates += 1
      continue
    entries[word] = vad
  return VadLexicon(entries=entries, source=source, format=described, scale=scale, sha256=sha256,
                    duplicates=duplicates)


def load_lexicon(path, fmt: str = "auto") -> VadLexicon:
  """Read a VAD lexicon file (NRC-VAD v1 / v1 bipolar / v2.1, Warriner CSV); values on -1..1.
  `path`: a local path or any etils.epath URI (gs://...)."""
  path = io_utils.as_path(path)
  io_utils.check_path(path, "file", "VAD lexicon", ". NRC-VAD cannot be redistributed: download "
                      f"it yourself, or use the project's demo lexicon {DEMO_LEXICON_PATH}")
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                     "NRC-VAD and Warriner files are UTF-8: re-save it as UTF-8") from None
  return parse_lexicon(text, fmt=fmt, source=str(path), sha256=hashlib.sha256(raw).hexdigest())


def token_words(tokenizer) -> list[str]:
  """Per GPT-2 token: its text without the BPE space marker, stripped, lowercased."""
  return [tokenizer.token_text(i).strip().lower() for i in range(vocab.GPT2_VOCAB_SIZE)]


def compute_token_vad_table(tokenizer, lexicon: VadLexicon, lookup: str = "word_then_lemma"
                            ) -> np.ndarray:
  """float32[VOCAB_SIZE, 3]: lexicon VAD of every token (rows of control tokens are zero);
  wordnet_pos without training text: each token tagged alone (vad_wordnet.py)."""
  if lookup == "wordnet_pos":
    return vad_wordnet.token_vad_table(tokenizer, lexicon)[0]
  table = np.zeros((vocab.VOCAB_SIZE, 3), np.float32)
  for i, word in enumerate(token_words(tokenizer)):
    if word:
      table[i] = lexicon.lookup(word, lookup)
  return table


def default_cache_dir() -> pathlib.Path:
  """$SEVLM_CACHE_DIR/vad, else ~/.cache/sevlm_jax/vad."""
  base = os.environ.get("SEVLM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sevlm_jax")
  return pathlib.Path(base) / "vad"


def token_vad_table(tokenizer, lexicon: VadLexicon, *, cache_dir=None, lookup: str = "word_then_lemma"
                    ) -> np.ndarray:
  """`compute_token_vad_table`, cached on disk when the lexicon came from a file."""
  if lookup not in LOOKUPS:
    raise ValueError(f"VAD lookup rule must be one of {LOOKUPS}, got {lookup!r}")
  if lexicon.sha256 is None:
    return compute_token_vad_table(tokenizer, lexicon, lookup)
  key = hashlib.sha256("|".join([lexicon.sha256, lexicon.format, _TABLE_VERSION,
                                 str(vocab.VOCAB_SIZE), lookup]).encode()).hexdigest()[:24]
  cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  path = cache_dir / f"token_vad_{key}.npy"
  if path.is_file():
    try:
      table = np.load(path)
      if table.shape == (vocab.VOCAB_SIZE, 3) and table.dtype == np.float32:
        return table
    except (OSError, ValueError):
      pass  # unreadable cache: recompute and overwrite
  table = compute_token_vad_table(tokenizer, lexicon, lookup)
  try:
    cache_dir.mkdir(parents=True, exist_ok=True)
    io_utils.save_npy_atomic(path, table)  # readers see the old file or the complete new one
  except OSError:
    pass  # read-only cache location: the table is still correct, just not cached
  return table
