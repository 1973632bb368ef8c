"""data.vad_lookup=wordnet_pos: the public code's rule (NLTK's tagger, then WordNet's lemmatiser).

The code around NLTK runs with a stand-in tagger and lemmatiser, always; the checks against NLTK
itself need its data (python -m nltk.downloader wordnet averaged_perceptron_tagger_eng) and skip
without it, as they do in CI, which cannot download it.
"""

import csv
import json
import pathlib

import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax import vocab
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.data import vad_table
from sevlm_jax.data import vad_wordnet
from helpers import load_config

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
LEXICON = vad_lib.VadLexicon({"painting": np.array([0.5, 0.1, 0.2], np.float32),
                              "paint": np.array([0.2, 0.3, 0.4], np.float32),
                              "calm": np.array([0.9, -0.8, 0.1], np.float32)})


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.load_tokenizer()


def fake_nltk(calls=None) -> vad_wordnet.Nltk:
  """'painting' is a verb after 'love' (else a noun), as a tagger reads its sentence; the verb's
  lemma is 'paint'; everything else is a noun, its own lemma."""
  def tag(words):
    if calls is not None:
      calls.append(list(words))
    return [(w, "VBG" if w == "painting" and i and words[i - 1] == "love" else "NN")
            for i, w in enumerate(words)]
  return vad_wordnet.Nltk(tag=tag, lemmatize=lambda w, pos: "paint" if (w, pos) == ("painting", "v") else w)


@pytest.mark.parametrize("tag, pos", [("JJ", "a"), ("JJS", "a"), ("VBG", "v"), ("VBD", "v"),
                                      ("NNS", "n"), ("NNP", "n"), ("RB", "r"), ("RBR", "r"),
                                      ("IN", "n"), ("DT", "n"), (".", "n"), ("", "n")])
def test_treebank_tags_map_as_the_public_get_wordnet_pos(tag, pos):
  assert vad_wordnet.wordnet_pos(tag) == pos


def test_the_tagged_strings_are_the_public_codes_tokens(tokenizer):
  strings = vad_wordnet.token_strings(tokenizer)
  assert strings[vocab.BOS_ID] == "<|endoftext|>" and strings[vocab.PAD_ID] == "<pad>"
  (painting,) = tokenizer.encode(" painting")
  assert strings[painting] == "painting"  # 'Ġpainting' without its marker
  ids = tokenizer.build_sequence("awe", "i love painting", 12)["input_ids"]
  assert [strings[i] for i in ids] == ["<|endoftext|>", "the", "emotion", "is", "awe", "because",
                                       "i", "love", "painting", "<|endoftext|>", "<pad>", "<pad>"]


def test_a_lemma_is_looked_up_as_it_is():
  np.testing.assert_array_equal(vad_wordnet.lemma_vad("calm", LEXICON), LEXICON.entries["calm"])
  assert not vad_wordnet.lemma_vad("Calm", LEXICON).any()  # no lowercasing, as the public code
  assert not vad_wordnet.lemma_vad("<pad>", LEXICON).any()


def test_each_token_gets_the_lemma_its_training_sentences_gave_it_most(tokenizer):
  calls = []
  sequences = [tokenizer.build_sequence("awe", text, 14)["input_ids"]
               for text in ("the painting is calm", "a calm painting", "i love painting")]
  table, stats = vad_wordnet.token_vad_table(tokenizer, LEXICON, sequences, fake_nltk(calls))
  (painting,), (paint,), (calm,) = (tokenizer.encode(f" {w}") for w in ("painting", "paint", "calm"))
  np.testing.assert_array_equal(table[painting], LEXICON.entries["painting"])  # 2 nouns, 1 verb
  np.testing.assert_array_equal(table[calm], LEXICON.entries["calm"])
  np.testing.assert_array_equal(table[paint], LEXICON.entries["paint"])  # never met: tagged alone
  assert not table[vocab.BOS_ID:].any()  # control tokens
  assert calls[:3] == [[vad_wordnet.token_strings(tokenizer)[i] for i in s] for s in sequences]
  real = sum(int((s < vocab.BOS_ID).sum()) for s in sequences)
  assert stats.sequences == 3 and stats.positions == real
  assert stats.positions - stats.same_vad == 1  # 'love painting' is 'paint' in its sentence
  assert stats.vad_positions == 5 and stats.same_vad_of_those == 4  # painting x3, calm x2
  assert stats.tagged_alone == vocab.BOS_ID - len({int(i) for s in sequences for i in s
                                                   if i < vocab.BOS_ID})


def test_the_sequence_rule_gives_each_position_its_context_vad(tokenizer):
  ids = tokenizer.build_sequence("awe", "i love painting", 10)["input_ids"]
  strings = vad_wordnet.token_strings(tokenizer)
  got = vad_wordnet.sequence_vad(ids, strings, LEXICON, fake_nltk())
  assert got.shape == (10, 3)
  np.testing.assert_array_equal(got[8], LEXICON.entries["paint"])
  assert not np.delete(got, 8, axis=0).any()


def test_without_nltk_or_its_data_one_line_names_the_command(monkeypatch):
  vad_wordnet.load_nltk.cache_clear()
  monkeypatch.setattr(errors, "optional_import", lambda module, needed_for: (_ for _ in ()).throw(
      errors.MissingDependencyError(f"{needed_for} needs nltk")))
  with pytest.raises(errors.MissingDependencyError, match="wordnet_pos needs nltk"):
    vad_wordnet.load_nltk()

  class NoData:  # nltk installed, its data not: NLTK raises a LookupError of many lines
    WordNetLemmatizer = object

    @staticmethod
    def pos_tag(words):
      raise LookupError("\n****\n  Resource averaged_perceptron_tagger_eng not found.\n****\n")

  vad_wordnet.load_nltk.cache_clear()
  monkeypatch.setattr(errors, "optional_import", lambda module, needed_for: NoData)
  with pytest.raises(errors.MissingDependencyError) as raised:
    vad_wordnet.load_nltk()
  vad_wordnet.load_nltk.cache_clear()
  message = str(raised.value)
  assert "\n" not in message and message.endswith(vad_wordnet.DOWNLOAD_COMMAND)
  assert vad_wordnet.DOWNLOAD_COMMAND == (
      "python -m nltk.downloader wordnet averaged_perceptron_tagger_eng")


def test_a_runs_table_records_how_it_was_made(tokenizer, tmp_path, monkeypatch):
  monkeypatch.setattr(vad_wordnet, "load_nltk", fake_nltk)
  config = load_config("demo")
  config.data.vad_lookup = "wordnet_pos"
  table = vad_table.load_vad_table(config, tokenizer, str(tmp_path))  # no data set: tagged alone
  recorded = json.loads((tmp_path / vad_table.PROVENANCE_FILE).read_text())
  assert recorded["vad_lookup"] == "wordnet_pos"
  assert recorded["wordnet_pos"]["sequences"] == 0
  assert recorded["wordnet_pos"]["tagged_alone"] == vocab.BOS_ID
  assert table.shape == (vocab.VOCAB_SIZE, 3) and table.any()
  with pytest.raises(ValueError, match="needs the word's sentence"):
    LEXICON.lookup("painting", "wordnet_pos")


# ----------------------------------------------------------------------------- against NLTK itself

def real_nltk() -> vad_wordnet.Nltk:
  pytest.importorskip("nltk")
  vad_wordnet.load_nltk.cache_clear()
  try:
    return vad_wordnet.load_nltk()
  except errors.MissingDependencyError as e:
    pytest.skip(f"NLTK's data is not installed ({e})")


def fixture_utterances() -> list[str]:
  with open(FIXTURES / "artemis_small_preprocessed.csv", newline="", encoding="utf-8") as f:
    return [row["utterance_spelled"] for row in csv.DictReader(f)]


def test_nltk_gives_its_documented_tags_and_lemmas():
  nltk = real_nltk()
  words = "John 's big idea is n't all that bad .".split()
  assert [t for _, t in nltk.tag(words)] == ["NNP", "POS", "JJ", "NN", "VBZ", "RB", "PDT", "DT",
                                              "JJ", "."]  # nltk.tag.pos_tag's docstring
  assert [nltk.lemmatize(w, p) for w, p in [("painting", "v"), ("painting", "n"),
                                            ("disgusting", "a"), ("disgusting", "v"),
                                            ("was", "v"), ("Colors", "n")]] == [
      "paint", "painting", "disgusting", "disgust", "be", "Colors"]


def test_the_rule_is_the_public_codes_two_lines_on_real_utterances(tokenizer):
  nltk = real_nltk()
  import nltk as nltk_module  # pylint: disable=import-outside-toplevel
  from nltk.stem import WordNetLemmatizer  # pylint: disable=import-outside-toplevel
  lemmatizer = WordNetLemmatizer()
  strings = vad_wordnet.token_strings(tokenizer)
  for text in fixture_utterances()[:60]:
    words = [strings[i] for i in tokenizer.build_sequence("awe", text, 30)["input_ids"]]
    public = [lemmatizer.lemmatize(w, vad_wordnet.wordnet_pos(p)) for w, p in nltk_module.pos_tag(words)]
    assert vad_wordnet.context_lemmas(words, nltk) == public
