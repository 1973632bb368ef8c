"""One painting is one painting: its name in NFC and in NFD (decomposed accents) is one record in
one split, in every input format; and the main command reads ArtEmis's preprocessed CSV as that."""

import csv
import json
import logging
import pathlib
import unicodedata

import pytest
from PIL import Image

from sevlm_jax import errors
from sevlm_jax.data import prepare
from sevlm_jax.data import records
from sevlm_jax.data import sources
from sevlm_jax.data import splits
from sevlm_jax.data import annotations
from sevlm_jax.data.annotations import painting_key

from tests import helpers

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
PREPROCESSED_CSV = FIXTURES / "artemis_small_preprocessed.csv"
NFC = unicodedata.normalize("NFC", "café-terrace")
NFD = unicodedata.normalize("NFD", "café-terrace")
STYLE_NFD = unicodedata.normalize("NFD", "Réalisme")  # an accented folder name, too
HEADER = ["art_style", "painting", "emotion", "utterance", "repetition"]


def _write_csv(path, rows, header=HEADER):
  with open(path, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([header, *rows])
  return path


def _images(root, names):
  """One small image per (style, name), stored under the name's NFD spelling."""
  for style, name in names:
    folder = root / unicodedata.normalize("NFD", style)
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (90, 120, 150)).save(folder / f"{unicodedata.normalize('NFD', name)}.jpg")
  return root


def _plain_rows(n):
  return [["Cubism", f"p{i:02d}", "awe", f"a plain painting {i} take {k}", 5]
          for i in range(n) for k in range(2)]


def _prepare(tmp_path, inputs, **kwargs):
  return prepare.prepare_ready(inputs, tmp_path / "img", tmp_path / "out", image_size=8, workers=0,
                               text_preprocessing="raw", progress=False, log=lambda *a: None,
                               **kwargs)


def _by_split(out):
  return {s: records.load_annotations(out, s) for s in records.SPLITS}


def _paintings_per_split(out):
  """split -> the NFC keys of its paintings; no key may be in two splits."""
  keyed = {s: [painting_key(r["art_style"], r["painting"]) for r in recs]
           for s, recs in _by_split(out).items()}
  everything = [k for keys in keyed.values() for k in keys]
  assert len(everything) == len(set(everything)), keyed
  return keyed


def test_an_nfc_nfd_pair_in_one_v1_csv_is_one_painting(tmp_path):
  rows = _plain_rows(30) + [["Expressionism", NFC, "awe", "bright cafe", 3],
                            ["Expressionism", NFD, "fear", "dark street", 3],
                            [STYLE_NFD, NFD, "awe", "a southern cafe", 2],
                            [unicodedata.normalize("NFC", STYLE_NFD), NFC, "sadness", "empty chairs", 2]]
  _images(tmp_path / "img", [("Cubism", f"p{i:02d}") for i in range(30)]
          + [("Expressionism", NFC), (STYLE_NFD, NFC)])
  out, report = _prepare(tmp_path, _write_csv(tmp_path / "v1.csv", rows))
  keyed = _paintings_per_split(out)
  assert sum(map(len, keyed.values())) == 32  # 30 + 2, not 34
  recs = {r["image_id"]: r for recs in _by_split(out).values() for r in recs}
  cafe = recs[f"Expressionism/{NFC}"]
  assert cafe["utterances"] == ["bright cafe", "dark street"] and cafe["painting"] == NFC
  assert recs[painting_key(STYLE_NFD, NFD)]["utterances"] == ["a southern cafe", "empty chairs"]
  assert report["totals"]["paintings_merged"] == 2
  merged = report["repaired"]["unicode_names_merged"]
  assert merged["count"] == 2
  assert merged["items"][0]["spellings"] == [f"Expressionism/{NFC}", f"Expressionism/{NFD}"]
  assert records.load_meta(out)["totals"]["paintings_merged"] == 2


def test_an_nfc_nfd_pair_across_v2_csvs_is_one_painting(tmp_path):
  v1 = _write_csv(tmp_path / "v1.csv", _plain_rows(20) + [["Expressionism", NFC, "awe", "bright", 2]])
  contrastive = _write_csv(tmp_path / "contrastive.csv",
                           [["Expressionism", NFD, "sadness", "lonely", 1, "Cubism/p00", "new"]],
                           header=HEADER + ["anchor_painting", "version"])
  _images(tmp_path / "img", [("Cubism", f"p{i:02d}") for i in range(20)] + [("Expressionism", NFC)])
  out, report = _prepare(tmp_path, [v1, contrastive])
  assert records.load_meta(out)["source"]["format"] == "v2"
  keyed = _paintings_per_split(out)
  assert sum(map(len, keyed.values())) == 21
  (cafe,) = [r for recs in _by_split(out).values() for r in recs if r["painting"] == NFC]
  assert cafe["emotions"] == [1, 7] and cafe["utterances"] == ["bright", "lonely"]
  assert report["totals"]["paintings_merged"] == 1


def test_a_csv_in_one_normal_form_keeps_artemis_own_split(tmp_path):
  """The split key keeps the spelling read: an all-NFD CSV splits as ArtEmis splits it."""
  names = [unicodedata.normalize("NFD", f"é-{i:02d}") for i in range(12)] + [f"f-{i:02d}" for i in range(12)]
  rows = [["Cubism", n, "awe", f"take {k}", 5] for n in names for k in range(2)]
  _images(tmp_path / "img", [("Cubism", n) for n in names])
  out, report = _prepare(tmp_path, _write_csv(tmp_path / "v1.csv", rows))
  want = splits.artemis_split(["Cubism" + n for n in names])
  got = {r["painting"]: s for s, recs in _by_split(out).items() for r in recs}
  assert got == {unicodedata.normalize("NFC", n): want["Cubism" + n] for n in names}
  assert report["totals"]["paintings_merged"] == 0


def test_the_preprocessed_csv_puts_a_painting_artemis_split_in_two_in_one(tmp_path):
  header = HEADER + ["split", "utterance_spelled"]
  rows = [["S", NFC, "awe", "Sea.", 5, "train", "a calm sea"],
          ["S", NFD, "fear", "Sky.", 5, "test", "a dark sky"],
          ["S", "other", "awe", "Sun.", 5, "train", "a warm sun"]]
  _images(tmp_path / "img", [("S", NFC), ("S", "other")])
  out, report = _prepare(tmp_path, _write_csv(tmp_path / "pre.csv", rows, header))
  keyed = _paintings_per_split(out)
  assert keyed["test"] == [f"S/{NFC}"] and keyed["train"] == ["S/other"]
  (item,) = report["repaired"]["painting_in_two_splits"]["items"]
  assert item["given"] == {f"S/{NFC}": "train", f"S/{NFD}": "test"} and item["kept"] == "test"
  # One spelling in two splits is still the file's error.
  rows[1][1] = NFC
  with pytest.raises(errors.InputError, match=r"pre.csv: line 3 puts S/café-terrace in split 'test'"):
    prepare.prepare_ready(_write_csv(tmp_path / "pre.csv", rows, header), tmp_path / "img",
                          tmp_path / "out2", workers=0, progress=False, log=lambda *a: None)


def test_sevlm_json_entries_of_one_painting_are_one_record_in_one_split(tmp_path):
  train = {"1": {"emotions": ["awe", "awe"], "explanations": ["big", "wide"],
                 "image_name": f"S/{NFC}.jpg", "origin_emotion_distribution": [0, 1, 0, 0, 0, 0, 0, 0, 0]},
           "2": {"emotions": ["fear"], "explanations": ["dark"], "image_name": "S/other.jpg"}}
  test = {"3": {"emotions": ["fear", "fear"], "explanations": ["grim", "cold"],
                "image_name": f"S/{NFD}.jpg", "origin_emotion_distribution": [0, 0, 0, 0, 0, 0, 1, 0, 0]}}
  paths = {}
  for split, data in (("train", train), ("test", test)):
    paths[split] = tmp_path / f"{split}.json"
    paths[split].write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
  _images(tmp_path / "img", [("S", NFC), ("S", "other")])
  out, report = _prepare(tmp_path, paths)
  keyed = _paintings_per_split(out)
  assert keyed["test"] == [f"S/{NFC}"] and keyed["train"] == ["S/other"]
  (rec,) = records.load_annotations(out, "test")
  assert rec["image_id"] == "1" and rec["utterances"] == ["big", "wide", "grim", "cold"]
  assert rec["histogram"][1] == pytest.approx(0.5) and rec["histogram"][6] == pytest.approx(0.5)
  assert report["totals"]["paintings_merged"] == 1
  assert report["repaired"]["painting_in_two_splits"]["items"][0]["kept"] == "test"


def test_the_disjointness_check_refuses_a_painting_twice():
  rec = {"image_id": "a", "art_style": "S", "painting": NFC}
  annotations.check_disjoint({"train": [rec], "test": [dict(rec, painting="other")]})
  with pytest.raises(RuntimeError, match="is in two records"):
    annotations.check_disjoint({"train": [rec], "test": [dict(rec, image_id="b", painting=NFD)]})
  with pytest.raises(RuntimeError, match="is in two records"):
    annotations.check_disjoint({"train": [rec, dict(rec, image_id="b")]})


def _preprocessed_images(root):
  with open(PREPROCESSED_CSV, newline="", encoding="utf-8") as f:
    return _images(root, {(r["art_style"], r["painting"]) for r in csv.DictReader(f)})


def test_main_reads_artemis_preprocessed_csv_as_that_and_says_so(tmp_path, caplog):
  config = helpers.load_config("artemis_v1")
  assert config.data.source == "artemis_v1"
  config.data.csv = str(PREPROCESSED_CSV)
  config.data.images = str(_preprocessed_images(tmp_path / "img"))
  config.data.image_size = 8
  with caplog.at_level(logging.INFO):
    ready = sources.resolve_ready_dir(config, str(tmp_path / "work"))
  assert "reading it as artemis_preprocessed, its split and text as given" in caplog.text
  meta = records.load_meta(ready)
  assert meta["source"]["format"] == "artemis_preprocessed"
  with open(PREPROCESSED_CSV, newline="", encoding="utf-8") as f:
    given = {f"{r['art_style']}/{r['painting']}": r["split"] for r in csv.DictReader(f)}
  got = {r["image_id"]: s for s, recs in _by_split(ready).items() for r in recs}
  assert got == given  # the file's split, not a new one
  sources.check_prepared(config, ready)  # reused as it is, whatever data.source says
  # A raw CSV is read as data.source says, and the log names it.
  config.data.csv = str(FIXTURES / "artemis_small.csv")
  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert sources.check_data_source(config, str(tmp_path / "none")) == "v1"
  assert "as v1 (data.source=artemis_v1)" in caplog.text
