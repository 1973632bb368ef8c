"""ArtEmis's text preprocessing for deep nets, and ArtEmis's own preprocessed CSV as an input.

Expected values come from ArtEmis's own code, not from this package: the token lists were
produced by NLTK 3.4.5's word_tokenize rules (the version ArtEmis pins) and by ArtEmis's
language functions with symspellpy 6.5.2 (likewise), and tests/fixtures/artemis_small_preprocessed.csv
is what ArtEmis's preprocess() (--preprocess-for-deep-nets True: its split, tokenize_and_spell and
length filters) makes of tests/fixtures/artemis_small.csv.
"""

import csv
import importlib.util
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from sevlm_jax import errors
from sevlm_jax import run as run_lib
from sevlm_jax.data import artemis_text
from sevlm_jax.data import formats
from sevlm_jax.data import prepare
from sevlm_jax.data import records
from sevlm_jax.data import treebank
from sevlm_jax.vocab import EMOTIONS

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
RAW_CSV = FIXTURES / "artemis_small.csv"
PREPROCESSED_CSV = FIXTURES / "artemis_small_preprocessed.csv"

# (text, NLTK 3.4.5 word_tokenize(text)): quotes, clitics, brackets, MacIntyre's contractions.
TREEBANK_CASES = [
    ('i do not like the "big" dog\'s (red) hat & it\'s gonna be great',
     ['i', 'do', 'not', 'like', 'the', '``', 'big', "''", 'dog', "'s", '(', 'red', ')', 'hat', '&', 'it',
      "'s", 'gon', 'na', 'be', 'great']),
    ('"quoted" at the start and \'single\' quotes, cannot stop -- wanna go',
     ['``', 'quoted', "''", 'at', 'the', 'start', 'and', "'single", "'", 'quotes', ',', 'can', 'not',
      'stop', '--', 'wan', 'na', 'go']),
    ("they'll say i'm the one who'd rather 'tis said more'n that",
     ['they', "'ll", 'say', 'i', "'m", 'the', 'one', 'who', "'d", 'rather', "'t", 'is', 'said', 'more',
      "'", 'n', 'that']),
    ('the sky “glows” and ‘shines’ it’s 3,000 years old: $5 or 10% #art @home',
     ['the', 'sky', '“', 'glows', '”', 'and', '‘', 'shines', '’', 'it', '’', 's', '3,000', 'years',
      'old', ':', '$', '5', 'or', '10', '%', '#', 'art', '@', 'home']),
    ("a { b } [ c ] < d > the '80s ``really'' lemme gimme gotta d'ye",
     ['a', '{', 'b', '}', '[', 'c', ']', '<', 'd', '>', 'the', "'80s", '``', 'really', "''", 'lem', 'me',
      'gim', 'me', 'got', 'ta', 'd', "'ye"]),
]

# (raw utterance, ArtEmis's spelled tokens).
ARTEMIS_CASES = [
    # lowercasing, contractions, punctuation to spaces, the token table (colour), SymSpell (beutiful)
    ("The colour's beutiful -- I'm sure they're DANCING; it's not 'sad' at all!!",
     ['the', 'color', "'s", 'beautiful', 'i', 'am', 'sure', 'they', 'are', 'dancing', 'it', 'is', 'not',
      'sad', 'at', 'all']),
    # the sentence table matches the raw utterance, its trailing space included
    ("the detective ihas found the diar everyone knew she kept and now hopefully he wi findout what "
     "led up to her breakdown ",
     ['the', 'detective', 'has', 'found', 'the', 'diary', 'everyone', 'knew', 'she', 'kept', 'and', 'now',
      'hopefully', 'he', 'will', 'find', 'out', 'what', 'led', 'up', 'to', 'her', 'breakdown']),
    # token table entries that become two tokens; a real word GloVe lacks is kept
    ("im in thecountry, in a hellscape (so to speak)... wouldn't you say?",
     ['i', 'am', 'in', 'the', 'country', 'in', 'a', 'hellscape', '(', 'so', 'to', 'speak', ')', 'would',
      'not', 'you', 'say']),
    # ArtEmis's contraction table matches inside words too ("toilet's" holds "let's")
    ('the toilet\'s lid and a "queen" -- o\'clock',
     ['the', 'toilet', 'us', 'lid', 'and', 'a', 'queen', 'of', 'the', 'clock']),
]

# What ArtEmis's filters do to tests/fixtures/artemis_small.csv (344 rows, 61 paintings).
FIXTURE_COUNTS = {"unknown_emotion": 1, "empty_utterance": 1, "too_short_utterance": 23,
                  "too_long_utterance": 20}
FIXTURE_MAX_TOKENS = 35.5  # the 95th percentile of the train split's token counts


@pytest.mark.parametrize("text, tokens", TREEBANK_CASES)
def test_treebank_tokenize_gives_nltk_3_4_5_word_tokenize(text, tokens):
  assert treebank.tokenize(text) == tokens


def test_treebank_tokenize_refuses_text_punkt_would_split():
  with pytest.raises(ValueError, match="punkt"):
    treebank.tokenize("one sentence. another one")


@pytest.fixture(scope="module")
def spell():
  return artemis_text.preprocessor()


@pytest.mark.parametrize("utterance, tokens", ARTEMIS_CASES)
def test_utterances_are_spelled_as_artemis_spells_them(spell, utterance, tokens):
  assert spell.tokens(utterance) == tokens
  assert spell(utterance) == (" ".join(tokens), len(tokens))


def test_the_sentence_table_needs_the_utterance_as_written(spell):
  as_written = ARTEMIS_CASES[1][0]
  assert spell.tokens(as_written.strip()) != spell.tokens(as_written)


def test_artemis_lookup_call_gives_closest_suggestion(spell):
  """ArtEmis's lookup(token, 1) (1 as the verbosity, the dictionary's distance 2) and CLOSEST at
  distance 2 name the same first suggestion."""
  for token in ("beutiful", "peacefull", "paitning", "colr", "dakr", "xqzt"):
    artemis_call = spell._speller.lookup(token, 1)
    assert [s.term for s in artemis_call[:1]] == ([spell.correct(token)] if artemis_call else [])


def test_word_lists_are_checked_against_their_sha256(tmp_path):
  for name in artemis_text.FILES:
    shutil.copy(artemis_text.default_dir() / name, tmp_path / name)
  with open(tmp_path / "glove.6B.100d.vocabulary.txt", "a", encoding="utf-8") as f:
    f.write("notaword\n")
  with pytest.raises(ValueError, match=r"glove.6B.100d.vocabulary.txt has sha256 .* \(ArtEmis's file\)"):
    artemis_text.Preprocessor(tmp_path)


def test_the_symspell_dictionary_is_checked_against_its_sha256(tmp_path):
  for name in artemis_text.FILES:
    shutil.copy(artemis_text.default_dir() / name, tmp_path / name)
  name = "symspell_frequency_dictionary_en_82_765.txt"
  with open(tmp_path / name, "a", encoding="utf-8") as f:
    f.write("notaword 1\n")
  with pytest.raises(ValueError, match=name + r" has sha256 .* \(ArtEmis's file\)"):
    artemis_text.Preprocessor(tmp_path)

def test_length_bounds_are_five_tokens_and_the_train_95th_percentile():
  assert artemis_text.length_bounds(range(1, 21)) == (5, float(np.percentile(np.arange(1, 21), 95)))
  with pytest.raises(ValueError):
    artemis_text.length_bounds([])


def _images_for(csv_path, root) -> pathlib.Path:
  with open(csv_path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      folder = root / row["art_style"]
      folder.mkdir(parents=True, exist_ok=True)
      Image.new("RGB", (8, 8), (90, 60, 30)).save(folder / f"{row['painting']}.jpg")
  return root


def _content(out) -> set:
  return {(split, rec["image_id"], EMOTIONS[e], u) for split in records.SPLITS
          for rec in records.load_annotations(out, split) for e, u in zip(rec["emotions"], rec["utterances"])}


def _artemis_rows() -> set:
  with open(PREPROCESSED_CSV, newline="", encoding="utf-8") as f:
    return {(r["split"], f"{r['art_style']}/{r['painting']}", r["emotion"], r["utterance_spelled"])
            for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def prepared_small(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("artemis_text")
  images = _images_for(RAW_CSV, tmp / "img")
  out, report = prepare.prepare_ready(RAW_CSV, images, tmp / "out", image_size=8, workers=0,
                                      progress=False, log=lambda *a: None)
  return out, report, images


def test_prepared_text_and_splits_are_artemis_own(prepared_small):
  out, _, _ = prepared_small
  assert _content(out) == _artemis_rows()
  meta = records.load_meta(out)
  assert meta["text_preprocessing"] == "artemis"
  assert meta["length_filter"]["min_tokens"] == 5
  assert meta["length_filter"]["max_tokens"] == FIXTURE_MAX_TOKENS


def test_report_counts_every_row_each_filter_drops(prepared_small):
  _, report, _ = prepared_small
  assert {k: v["count"] for k, v in report["skipped"].items()} == FIXTURE_COUNTS
  totals = report["totals"]
  assert totals["annotations_read"] == 344
  assert totals["annotations_read"] - sum(FIXTURE_COUNTS.values()) == totals["annotations_kept"] == 299
  assert (totals["paintings_set_aside"], totals["annotations_set_aside"]) == (1, 41)
  too_long = report["skipped"]["too_long_utterance"]["items"]
  assert all(item["tokens"] > FIXTURE_MAX_TOKENS for item in too_long)
  short = report["skipped"]["too_short_utterance"]["items"][0]
  assert set(short) == {"file", "line", "image_id", "split", "tokens", "text"} and short["tokens"] < 5
  with open(RAW_CSV, newline="", encoding="utf-8") as f:
    lines = {i + 2: row for i, row in enumerate(csv.DictReader(f))}  # no line breaks in the fixture
  assert lines[short["line"]]["painting"] == short["image_id"].split("/")[1]


def test_histogram_counts_the_annotations_the_length_filters_drop(prepared_small):
  """As ArtEmis's image-emotion-histogram.csv, the public SEVLM JSON's origin_emotion_distribution."""
  out, report, _ = prepared_small
  dropped = report["skipped"]["too_short_utterance"]["items"][0]
  with open(RAW_CSV, newline="", encoding="utf-8") as f:
    emotions = [r["emotion"] for r in csv.DictReader(f)
                if f"{r['art_style']}/{r['painting']}" == dropped["image_id"] and r["emotion"] in EMOTIONS
                and r["utterance"].strip()]
  want = np.bincount([EMOTIONS.index(e) for e in emotions], minlength=9) / len(emotions)
  (rec,) = [r for r in records.load_annotations(out, dropped["split"]) if r["image_id"] == dropped["image_id"]]
  assert len(rec["emotions"]) < len(emotions)
  np.testing.assert_allclose(rec["histogram"], want, atol=1e-6)


def test_artemis_preprocessed_csv_is_detected_and_used_as_given(prepared_small, tmp_path):
  _, _, images = prepared_small
  assert formats.detect_format([PREPROCESSED_CSV]) == "artemis_preprocessed"
  out, report = prepare.prepare_ready(PREPROCESSED_CSV, images, tmp_path / "out", image_size=8,
                                      workers=0, progress=False, log=lambda *a: None)
  assert _content(out) == _artemis_rows()
  assert report["skipped"] == {}
  assert records.load_meta(out)["text_preprocessing"] == "as given (artemis_preprocessed)"


def test_artemis_preprocessed_csv_with_a_bad_split_is_an_error_naming_the_line(tmp_path):
  header = "art_style,painting,emotion,utterance,repetition,split,utterance_spelled\n"
  path = tmp_path / "pre.csv"
  path.write_text(header + "S,p,awe,A sea.,5,train,a sea\nS,q,awe,Sky.,5,holdout,sky\n")
  (tmp_path / "img").mkdir()
  with pytest.raises(errors.InputError, match=r"pre.csv: line 3 has split 'holdout'"):
    prepare.prepare_ready(path, tmp_path / "img", tmp_path / "out", workers=0, progress=False)
  path.write_text(header + "S,p,awe,A sea.,5,train,a sea\nS,p,fear,Sky.,5,test,sky\n")
  with pytest.raises(errors.InputError, match=r"pre.csv: line 3 puts S/p in split 'test', an earlier "
                                              r"row in 'train'"):
    prepare.prepare_ready(path, tmp_path / "img", tmp_path / "out", workers=0, progress=False)


def test_raw_text_keeps_every_row_as_written(prepared_small, tmp_path):
  _, _, images = prepared_small
  _, report = prepare.prepare_ready(RAW_CSV, images, tmp_path / "out", image_size=8, workers=0,
                                    text_preprocessing="raw", progress=False, log=lambda *a: None)
  assert {k: v["count"] for k, v in report["skipped"].items()} == {"unknown_emotion": 1, "empty_utterance": 1}
  assert records.load_meta(tmp_path / "out")["length_filter"] is None


def _sevlm_config(variant: str):
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "sevlm.py"
  spec = importlib.util.spec_from_file_location("sevlm_config_for_text_tests", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def test_config_default_and_checks_of_text_preprocessing(prepared_small, tmp_path):
  config = _sevlm_config("artemis_v1")
  assert config.data.text_preprocessing == "artemis"
  config.data.text_preprocessing = "spelled"
  with pytest.raises(errors.ConfigError, match=r"data.text_preprocessing='spelled'; choose 'artemis'"):
    run_lib.check_config(config)
  # A data set prepared with the other preprocessing is named, not silently used.
  out, _, _ = prepared_small
  config.data.text_preprocessing = "raw"
  config.data.ready_dir = str(out)
  config.data.lexicon = str(pathlib.Path(run_lib.__file__).parent / "data" / "assets" / "demo_vad_lexicon.tsv")
  config.pretrained.gpt2 = config.pretrained.clip = ""
  with pytest.raises(errors.ConfigError, match=r"holds text preprocessed as 'artemis', the config "
                                               r"data.text_preprocessing='raw'"):
    run_lib.check_inputs_before_preparation(config, str(tmp_path / "work"))
