"""VAD lexicon formats, lemmatised lookup, and the per-token table."""

import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax import vocab
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad
import oracles


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return path


def _close(lex, word, expected):
  np.testing.assert_allclose(lex.lookup(word), expected, atol=1e-6)


def test_nrc_v1_zero_to_one_with_header(tmp_path):
  path = _write(tmp_path, "NRC-VAD-Lexicon.txt",
                "Word\tValence\tArousal\tDominance\nhappy\t1.000\t0.735\t0.772\nsad\t0.225\t0.333\t0.149\n"
                "table\t0.5\t0.0\t0.5\n")
  for fmt in ("nrc_v1", "auto"):
    lex = vad.load_lexicon(path, fmt=fmt)
    _close(lex, "happy", [1.0, 0.47, 0.544])
    _close(lex, "sad", [-0.55, -0.334, -0.702])
    _close(lex, "table", [0.0, -1.0, 0.0])
    assert lex.scale == "0..1" and len(lex) == 3
  assert vad.load_lexicon(path).format == "auto(0..1)"


def test_nrc_v1_bipolar_without_header(tmp_path):
  path = _write(tmp_path, "NRC-VAD-Lexicon-BipolarScale.txt", "happy\t1.0\t0.47\t0.544\nsad\t-0.55\t-0.334\t-0.702\n")
  for fmt in ("nrc_v1_bipolar", "auto"):
    lex = vad.load_lexicon(path, fmt=fmt)
    _close(lex, "sad", [-0.55, -0.334, -0.702])
    assert lex.scale == "-1..1"


def test_nrc_v2_multiword_terms_and_duplicates(tmp_path):
  path = _write(tmp_path, "NRC-VAD-Lexicon-v2.1.txt",
                "term\tvalence\tarousal\tdominance\na lot\t0.2\t0.3\t0.1\nCalm\t0.7\t-0.8\t0.3\ncalm\t0.1\t0.1\t0.1\n")
  lex = vad.load_lexicon(path, fmt="nrc_v2")
  _close(lex, "a lot", [0.2, 0.3, 0.1])
  _close(lex, "CALM", [0.7, -0.8, 0.3])  # first entry wins, case folded
  assert lex.duplicates == 1


def test_warriner_csv_with_header_and_index_column(tmp_path):
  header = ",Word,V.Mean.Sum,V.SD.Sum,V.Rat.Sum,A.Mean.Sum,A.SD.Sum,A.Rat.Sum,D.Mean.Sum,D.SD.Sum,D.Rat.Sum\n"
  path = _write(tmp_path, "Ratings_Warriner_et_al.csv",
                header + "1,aardvark,6.26,2.21,19,2.41,1.4,22,4.27,1.75,15\n2,abalone,5.3,1.59,20,2.65,1.9,20,4.95,1.79,22\n")
  for fmt in ("warriner", "auto"):
    lex = vad.load_lexicon(path, fmt=fmt)
    _close(lex, "aardvark", [(6.26 - 5) / 4, (2.41 - 5) / 4, (4.27 - 5) / 4])
    assert lex.scale == "1..9"


def test_warriner_style_without_header(tmp_path):
  path = _write(tmp_path, "norms.csv", "joy,8.6,6.1,6.9\ngrief,1.7,5.0,2.6\n")
  lex = vad.load_lexicon(path)
  _close(lex, "joy", [0.9, 0.275, 0.475])
  assert lex.format == "auto(1..9)"


def test_errors_name_file_line_and_scale(tmp_path):
  path = _write(tmp_path, "bad.txt", "# comment\nhappy\t0.9\t0.5\t0.5\nsad\tlow\t0.1\t0.2\n")
  with pytest.raises(ValueError, match=r"bad.txt: entry 2 .*sad"):
    vad.load_lexicon(path)
  path = _write(tmp_path, "nine.txt", "joy\t8.6\t6.1\t6.9\n")
  with pytest.raises(ValueError, match="outside the 0..1 scale"):
    vad.load_lexicon(path, fmt="nrc_v1")
  path = _write(tmp_path, "nine.csv", "joy,8.6,6.1,6.9\n")
  with pytest.raises(ValueError, match="expects tab-separated"):
    vad.load_lexicon(path, fmt="nrc_v2")
  with pytest.raises(ValueError, match="unknown lexicon format"):
    vad.load_lexicon(path, fmt="nrc_v3")
  with pytest.raises(FileNotFoundError, match="NRC-VAD cannot be redistributed"):
    vad.load_lexicon(tmp_path / "missing.txt")


def test_lemmatised_lookup():
  lex = vad.parse_lexicon("circle\t0.2\t-0.2\t0.1\nhappy\t0.9\t0.5\t0.5\ngo\t0.1\t0.2\t0.3\n", fmt="nrc_v2")
  _close(lex, "circles", [0.2, -0.2, 0.1])
  _close(lex, "Happier", [0.9, 0.5, 0.5])
  _close(lex, "went", [0.1, 0.2, 0.3])
  _close(lex, "zebra", [0, 0, 0])
  _close(lex, "", [0, 0, 0])


def test_demo_lexicon_covers_demo_grammar():
  from sevlm_jax.data import demo
  lex = oracles.demo_lexicon()
  assert 250 <= len(lex) <= 500 and lex.duplicates == 0
  assert all(np.any(v != 0) for v in lex.entries.values())  # (0,0,0) would read as "absent"
  words = set(demo.COLOURS) | set(demo.BRIGHTNESS) | set(demo.SHAPES) | set(demo.TEXTURES)
  for emotion in vocab.EMOTIONS:
    words |= {w for pool in demo.phrases_for(emotion) for p in pool for w in p.split()}
  function_words = {"and", "are", "at", "me", "my", "of", "on", "put", "the", "to", "with", "very"}
  missing = sorted(w for w in words - function_words if not np.any(lex.lookup(w)))
  assert not missing
  assert "circles" not in lex.entries and np.any(lex.lookup("circles"))  # found through its lemma


def test_token_table_matches_per_word_lookups(tmp_path, monkeypatch):
  tok = tokenizer_lib.load_tokenizer()
  lex = oracles.demo_lexicon()
  table = vad.token_vad_table(tok, lex, cache_dir=tmp_path)
  assert table.shape == (vocab.VOCAB_SIZE, 3) and table.dtype == np.float32
  assert not table[vocab.BOS_ID:].any()
  rng = np.random.default_rng(0)
  hits = np.flatnonzero(np.abs(table).sum(1))
  assert len(hits) > 300
  for i in np.concatenate([hits[:200], rng.integers(0, vocab.BOS_ID, 300)]):
    np.testing.assert_array_equal(table[i], lex.lookup(tok.token_text(int(i)).strip().lower()))
  for word in ("calm", "sadness", "circles"):  # " word" tokens carry the word's VAD
    (i,) = tok.encode(" " + word)
    np.testing.assert_array_equal(table[i], lex.lookup(word))
  # Cached on disk: a second call reads the file instead of recomputing.
  assert len(list(tmp_path.glob("token_vad_*.npy"))) == 1
  monkeypatch.setattr(vad, "compute_token_vad_table", lambda *a: pytest.fail("recomputed"))
  np.testing.assert_array_equal(vad.token_vad_table(tok, lex, cache_dir=tmp_path), table)


def test_lemma_only_lookup_ignores_the_listed_inflected_form(tmp_path):
  """The public code's rule: only the lemma is looked up."""
  entries = {w: np.full(3, v, np.float32) for w, v in
             (("loved", 0.9), ("love", 0.5), ("calm", 0.2))}
  lex = vad.VadLexicon(entries)
  assert lex.lookup("loved")[0] == np.float32(0.9)
  assert lex.lookup("loved", "lemma_only")[0] == np.float32(0.5)
  assert lex.lookup("calmer", "lemma_only")[0] == np.float32(0.2)  # through its lemma, as before
  assert not lex.lookup("sky", "lemma_only").any()
  tok = tokenizer_lib.load_tokenizer()
  (loved,) = tok.encode(" loved")
  assert vad.token_vad_table(tok, lex, lookup="lemma_only")[loved, 0] == np.float32(0.5)
  assert vad.token_vad_table(tok, lex)[loved, 0] == np.float32(0.9)
  with pytest.raises(ValueError, match="lookup"):
    lex.lookup("loved", "lemma_first")


def test_table_cache_is_keyed_by_lookup_rule(tmp_path):
  tok = tokenizer_lib.load_tokenizer()
  path = tmp_path / "lexicon.txt"
  path.write_text("loved\t0.9\t0.9\t0.9\nlove\t0.5\t0.5\t0.5\n", encoding="utf-8")
  lex = vad.load_lexicon(path)
  (loved,) = tok.encode(" loved")
  word = vad.token_vad_table(tok, lex, cache_dir=tmp_path / "cache")
  lemma = vad.token_vad_table(tok, lex, cache_dir=tmp_path / "cache", lookup="lemma_only")
  assert len(list((tmp_path / "cache").glob("token_vad_*.npy"))) == 2
  assert word[loved, 0] != lemma[loved, 0]


def test_table_cache_is_keyed_by_file_content(tmp_path):
  tok = tokenizer_lib.load_tokenizer()
  path = _write(tmp_path, "lex.tsv", "calm\t0.7\t-0.8\t0.3\n")
  first = vad.token_vad_table(tok, vad.load_lexicon(path), cache_dir=tmp_path / "cache")
  path.write_text("calm\t-0.7\t0.8\t-0.3\n")
  second = vad.token_vad_table(tok, vad.load_lexicon(path), cache_dir=tmp_path / "cache")
  (i,) = tok.encode(" calm")
  np.testing.assert_allclose(first[i], [0.7, -0.8, 0.3])
  np.testing.assert_allclose(second[i], [-0.7, 0.8, -0.3])
  assert len(list((tmp_path / "cache").glob("token_vad_*.npy"))) == 2


@pytest.mark.parametrize("name, content, message", [
    ("latin1.txt", "caf\xe9\t0.5\t0.5\t0.5\n".encode("latin-1"), "not UTF-8 text"),
    ("lexicon.json", b'{"calm": [0.5, 0.1, 0.6]}\n', "no word column"),
    ("two_columns.txt", b"word\tvalence\ncalm\t0.5\n", "no arousal column"),
    ("text_values.txt", b"calm\thigh\tlow\tmid\n", "no word column"),
    ("bad_scale.txt", b"calm\t5\t-3\t0.5\n", "outside the"),
])
def test_a_bad_lexicon_is_one_input_error_naming_its_file(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(errors.InputError) as e:
    vad.load_lexicon(path)
  assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)
