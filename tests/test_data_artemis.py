"""ArtEmis ingestion end to end on a small hand-made data set with bad cases."""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys
import time
import unicodedata

import numpy as np
import pytest
from PIL import Image

import ml_collections

from sevlm_jax import errors
from sevlm_jax.vocab import EMOTIONS
from sevlm_jax.data import dominant
from sevlm_jax.data import formats
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import prepare
from sevlm_jax.data import pipeline
from sevlm_jax.data import records
from sevlm_jax.data import sources
from sevlm_jax.data import splits

SIZE = 16
CAFE_NFC = unicodedata.normalize("NFC", "café-terrace")
CAFE_NFD = unicodedata.normalize("NFD", "café-terrace")
assert CAFE_NFC != CAFE_NFD

# Hand-checked paintings: (style, painting, emotions); utterances are generated per row.
SPECIAL = [
    ("Impressionism", "majority", ["amusement", "amusement", "awe", "amusement", "awe"]),     # 3/5
    ("Impressionism", "tie", ["fear", "sadness", "sadness", "fear"]),                         # 2/2 tie
    ("Baroque", "exactly-half", ["contentment", "anger", "contentment", "disgust",
                                  "contentment", "something else"]),                           # 3/6
    ("Baroque", "unanimous", ["excitement"] * 5),
    ("Expressionism", CAFE_NFC, ["awe", "awe", "fear"]),
]
EXPECTED_DOMINANT = {  # image_id: (dominant_half, dominant_artemis)
    "Impressionism/majority": (0, 0),
    "Impressionism/tie": (-1, 6),  # fear (6) and sadness (7) tie at exactly half: lower index
    "Baroque/exactly-half": (-1, 2),
    "Baroque/unanimous": (3, 3),
    f"Expressionism/{CAFE_NFC}": (1, 1),
}


def _colour(image_id):
  digest = np.frombuffer(image_id.encode("utf-8"), np.uint8)
  return tuple(int(40 + (digest.sum() * k) % 180) for k in (3, 5, 7))


def _save_image(root, style, name, image_id=None, size=(40, 28)):
  folder = root / style
  folder.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, _colour(image_id or f"{style}/{name}")).save(folder / f"{name}.jpg", quality=95)


def build_raw(tmp_path, n_plain=40):
  """A CSV with good paintings, every kind of bad row, and their images."""
  images = tmp_path / "wikiart"
  rows, expected = [], {}

  def add(style, name, emotion, utterance, repetition=5):
    rows.append([style, name, emotion, utterance, repetition])

  for style, name, emos in SPECIAL:
    image_id = f"{style}/{name}"
    expected[image_id] = {"emotions": [], "utterances": []}
    for k, e in enumerate(emos):
      text = f"  {name} makes me think, take {k}  "
      add(style, name, e, text, len(emos))
      expected[image_id]["emotions"].append(EMOTIONS.index(e))
      expected[image_id]["utterances"].append(text.strip())
  for i in range(n_plain):
    style = ("Cubism", "Realism")[i % 2]
    name = f"plain-{i:03d}"
    image_id = f"{style}/{name}"
    emos = [EMOTIONS[(i + k * (i % 3)) % 9] for k in range(5)]
    expected[image_id] = {"emotions": [EMOTIONS.index(e) for e in emos], "utterances": []}
    for k, e in enumerate(emos):
      text = f"plain painting {i} annotation {k}"
      add(style, name, e, text)
      expected[image_id]["utterances"].append(text)
  # Heavily annotated painting: its own split.
  expected["Romanticism/popular"] = {"emotions": [1] * 3, "utterances": ["vast sea"] * 3}
  for _ in range(3):
    add("Romanticism", "popular", "awe", "vast sea", 45)
  # Bad rows inside good paintings (lines are 1-based with the header on line 1).
  bad_lines = {}
  bad_lines["unknown_emotion"] = len(rows) + 2
  add("Impressionism", "majority", "happiness", "a happy scene")
  bad_lines["empty_utterance"] = len(rows) + 2
  add("Impressionism", "tie", "fear", "   ")
  bad_lines["missing_art_style_or_painting"] = len(rows) + 2
  add("", "nameless", "awe", "no style")
  # Bad paintings.
  add("Cubism", "missing", "anger", "there is no file for this one")
  add("Cubism", "missing", "fear", "nor for this one")
  add("Cubism", "broken", "awe", "this file is not an image")
  add("Cubism", "all-bad", "joyfulness", "unknown emotion only")

  for image_id in expected:
    style, name = image_id.split("/")
    disk_name = CAFE_NFD if name == CAFE_NFC else name  # file system holds the NFD form
    _save_image(images, style, disk_name, image_id)
  (images / "Cubism" / "broken.jpg").write_bytes(b"definitely not a jpeg")

  csv_path = tmp_path / "artemis_dataset_release_v0.csv"
  with open(csv_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
    writer.writerows(rows)
  return csv_path, images, expected, bad_lines


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("artemis")
  csv_path, images, expected, bad_lines = build_raw(tmp)
  out, report = prepare.prepare_ready(csv_path, images, tmp / "ready", image_size=SIZE, workers=0,
                                      text_preprocessing="raw",
                                      progress=False, log=lambda *a: None)
  return out, report, expected, bad_lines, csv_path


def _all_records(out):
  return {s: list(records.load_split(out, s)) for s in records.SPLITS}


def test_records_match_input_row_by_row(prepared):
  out, _, expected, _, _ = prepared
  seen = {}
  for split, recs in _all_records(out).items():
    for i, rec in enumerate(recs):
      assert rec["index"] == i
      assert rec["image_id"] not in seen, "paintings must not repeat across splits"
      seen[rec["image_id"]] = split
      want = expected[rec["image_id"]]
      assert rec["emotions"] == want["emotions"]
      assert rec["utterances"] == want["utterances"]
      counts = np.bincount(want["emotions"], minlength=9)
      np.testing.assert_array_equal(rec["counts"], counts)
      np.testing.assert_allclose(rec["histogram"], counts / counts.sum(), atol=1e-7)
      assert rec["histogram"].dtype == np.float32 and rec["histogram"].shape == (9,)
      assert rec["image"].shape == (SIZE, SIZE, 3) and rec["image"].dtype == np.uint8
      assert np.abs(rec["image"].astype(int) - _colour(rec["image_id"])).max() <= 4
      if rec["image_id"] in EXPECTED_DOMINANT:
        assert (rec["dominant_half"], rec["dominant_artemis"]) == EXPECTED_DOMINANT[rec["image_id"]]
      else:
        assert rec["dominant_half"] == dominant.dominant_half(rec["histogram"])
        assert rec["dominant_artemis"] == dominant.dominant_artemis(rec["histogram"])
  assert set(seen) == set(expected)
  assert seen["Romanticism/popular"] == "rest"


def test_splits_follow_artemis_rule(prepared):
  out, _, expected, _, _ = prepared
  normal = [k for k in expected if k != "Romanticism/popular"] + ["Cubism/missing", "Cubism/broken", "Cubism/all-bad"]
  want = splits.artemis_split([k.replace("/", "") for k in normal])
  for split, recs in _all_records(out).items():
    for rec in recs:
      if split != "rest":
        assert want[rec["art_style"] + rec["painting"]] == split
  n = len(normal)
  counts = {s: sum(v == s for v in want.values()) for s in ("train", "val", "test")}
  assert counts["test"] == round(0.1 * n)
  assert counts["val"] + counts["test"] == math.ceil((0.05 + 0.1) * n)


def test_artemis_split_is_deterministic_and_partitions():
  keys = [f"style{i % 7}painting{i}" for i in range(1000)]
  a = splits.artemis_split(keys)
  assert a == splits.artemis_split(list(reversed(keys)))  # order of appearance does not matter
  assert a != splits.artemis_split(keys, seed=7)
  sizes = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
  # 0.05 + 0.1 == 0.15000000000000002 in floating point, so ceil(...) * 1000 is 151, as in ArtEmis.
  assert sizes == {"train": 849, "val": 51, "test": 100}
  with pytest.raises(ValueError, match="summing to 1"):
    splits.artemis_split(keys, (0.8, 0.1, 0.2))


def test_dominant_rules():
  h = np.array([3, 2, 0, 0, 0, 0, 0, 0, 0]) / 5
  assert dominant.dominant_half(h) == 0 and dominant.dominant_artemis(h) == 0
  h = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0]) / 2
  assert dominant.dominant_half(h) == -1 and dominant.dominant_artemis(h) == 6
  h = np.array([2, 2, 1, 0, 0, 0, 0, 0, 0]) / 5
  assert dominant.dominant_half(h) == -1 and dominant.dominant_artemis(h) == -1


def test_report_lists_every_skip_and_repair(prepared):
  out, report, _, bad_lines, csv_path = prepared
  assert report == records.load_report(out)
  skipped = report["skipped"]
  for reason, line in bad_lines.items():
    (item,) = [i for i in skipped[reason]["items"] if i["line"] == line]
    assert item["file"] == str(csv_path)
  assert skipped["unknown_emotion"]["count"] == 2  # 'happiness' and 'joyfulness'
  assert {i["value"] for i in skipped["unknown_emotion"]["items"]} == {"happiness", "joyfulness"}
  assert skipped["missing_image"]["items"][0]["image_id"] == "Cubism/missing"
  assert skipped["missing_image"]["annotations_lost"] == 2
  (broken,) = skipped["unreadable_image"]["items"]
  assert broken["image_id"] == "Cubism/broken" and "Error" in broken["error"]
  assert skipped["no_valid_annotations"]["items"][0]["image_id"] == "Cubism/all-bad"
  (repair,) = report["repaired"]["unicode_normal_form"]["items"]
  assert repair["image_id"] == f"Expressionism/{CAFE_NFC}" and repair["found_as"] == "NFD"
  totals = report["totals"]
  assert totals["annotations_read"] == totals["annotations_kept"] + sum(
      e["annotations_lost"] for e in skipped.values())


def test_meta_and_completion(prepared):
  out, _, expected, _, _ = prepared
  meta = records.load_meta(out)
  recs = _all_records(out)
  assert meta["image_size"] == SIZE and meta["seed"] == splits.ARTEMIS_SEED
  assert meta["resize_filter"] == "bicubic"
  assert meta["source"]["format"] == "v1"
  for split in records.SPLITS:
    assert meta["splits"][split]["images"] == len(recs[split])
    assert meta["splits"][split]["annotations"] == sum(len(r["emotions"]) for r in recs[split])
    assert records.load_annotations(out, split) == [
        records.annotation_view(dict(r, image=r["image"])) for r in recs[split]]
  assert sum(m["images"] for m in meta["splits"].values()) == len(expected)
  assert (out / records.COMPLETE_MARKER).is_file()
  assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_resize_filters_are_pils_and_differ():
  rng = np.random.default_rng(0)
  picture = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
  for name, pil_filter in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
    np.testing.assert_array_equal(images_lib.resize_square(picture, 16, name),
                                  np.asarray(picture.resize((16, 16), pil_filter)))
  assert not np.array_equal(images_lib.resize_square(picture, 16, "bicubic"),
                            images_lib.resize_square(picture, 16, "bilinear"))
  with pytest.raises(ValueError, match="resize_filter"):
    images_lib.resize_square(picture, 16, "nearest")


def test_bilinear_data_set_is_resized_bilinearly_and_says_so(tmp_path):
  csv_path, image_dir, _, _ = build_raw(tmp_path, n_plain=10)
  rng = np.random.default_rng(0)
  for path in image_dir.rglob("*.jpg"):  # noise instead of flat colours, which any filter keeps
    if path.name != "broken.jpg":
      Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path, quality=95)
  out, _ = prepare.prepare_ready(csv_path, image_dir, tmp_path / "ready", image_size=SIZE, workers=0,
                                 progress=False, log=lambda *a: None, resize_filter="bilinear")
  assert records.load_meta(out)["resize_filter"] == "bilinear"
  rec = records.load_split(out, "train")[0]
  path = image_dir / rec["art_style"] / (rec["painting"] + ".jpg")
  np.testing.assert_array_equal(rec["image"], images_lib.load_image(path, SIZE, "bilinear"))
  assert not np.array_equal(rec["image"], images_lib.load_image(path, SIZE, "bicubic"))


def test_refuses_to_overwrite_and_survives_a_crash(prepared, tmp_path, monkeypatch):
  out, _, _, _, csv_path = prepared
  with pytest.raises(FileExistsError, match="overwrite"):
    prepare.prepare_ready(csv_path, csv_path.parent / "wikiart", out, image_size=SIZE, workers=0,
                          text_preprocessing="raw", progress=False)
  target = tmp_path / "crashed"

  def crash(self, record):
    raise RuntimeError("disk full")

  monkeypatch.setattr(records.SplitWriter, "write", crash)
  with pytest.raises(RuntimeError, match="disk full"):
    prepare.prepare_ready(csv_path, csv_path.parent / "wikiart", target, image_size=SIZE, workers=0,
                          text_preprocessing="raw",
                          progress=False, log=lambda *a: None)
  assert not target.exists() and not list(tmp_path.iterdir())
  with pytest.raises(ValueError, match="COMPLETE"):
    (tmp_path / "half").mkdir()
    records.load_split(tmp_path / "half", "train")


def test_missing_columns_give_a_clear_error(tmp_path):
  bad = tmp_path / "bad.csv"
  bad.write_text("art_style,painting,feeling,utterance\nA,b,awe,text\n")
  (tmp_path / "img").mkdir()
  with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) emotion"):
    prepare.prepare_ready(bad, tmp_path / "img", tmp_path / "out", workers=0,
                          text_preprocessing="raw", progress=False)


def test_v2_combined_csvs(tmp_path):
  images = tmp_path / "img"
  for name in ("p0", "p1"):
    _save_image(images, "Style", name)
  v1 = tmp_path / "v1.csv"
  v1.write_text("art_style,painting,emotion,utterance,repetition\nStyle,p0,awe,big sky,5\nStyle,p1,fear,dark,5\n")
  contrastive = tmp_path / "contrastive.csv"
  contrastive.write_text("art_style,painting,emotion,utterance,repetition,anchor_painting,version\n"
                         "Style,p0,sadness,lonely boat,5,Style/p9,new\n")
  assert formats.detect_format([v1, contrastive]) == "v2"
  out, report = prepare.prepare_ready([v1, contrastive], images, tmp_path / "out", image_size=8, workers=0,
                                      text_preprocessing="raw",
                                      split_loads=(0.5, 0.0, 0.5), progress=False, log=lambda *a: None)
  recs = {r["image_id"]: r for s in records.SPLITS for r in records.load_annotations(out, s)}
  assert recs["Style/p0"]["emotions"] == [1, 7]
  assert recs["Style/p0"]["utterances"] == ["big sky", "lonely boat"]
  assert records.load_meta(out)["source"]["format"] == "v2" and not report["skipped"]


def test_sevlm_json_per_split(tmp_path):
  images = tmp_path / "img"
  for name in ("a", "b", "c"):
    _save_image(images, "Style", name)
  train = {"1": {"emotions": ["awe", "fear", "awe"], "explanations": ["big", "dark", "wide"],
                 "image_name": "Style/a.jpg", "origin_emotion_distribution": [0, 4, 0, 0, 0, 0, 4, 0, 0]},
           "2": {"emotions": ["sadness", "joy"], "explanations": ["grey", "bright"], "image_name": "Style/b.jpg"},
           "3": {"emotions": ["awe"], "explanations": ["x", "y"], "image_name": "Style/c.jpg"}}
  test = {"4": {"emotions": [7, 7], "explanations": ["rain", ""], "image_name": "Style/c.jpg"}}
  paths = {}
  for split, data in (("train", train), ("test", test)):
    paths[split] = tmp_path / f"{split}.json"
    paths[split].write_text(json.dumps(data))
  out, report = prepare.prepare_ready(paths, images, tmp_path / "out", image_size=8, workers=0,
                                      text_preprocessing="raw",
                                      progress=False, log=lambda *a: None)
  train_recs = {r["image_id"]: r for r in records.load_split(out, "train")}
  assert set(train_recs) == {"1", "2"}
  np.testing.assert_allclose(train_recs["1"]["histogram"][[1, 6]], [0.5, 0.5])  # the given distribution
  assert train_recs["1"]["dominant_artemis"] == 1 and train_recs["1"]["dominant_half"] == -1
  assert train_recs["2"]["emotions"] == [7]
  (rec4,) = records.load_split(out, "test")
  assert rec4["image_id"] == "4" and rec4["utterances"] == ["rain"]
  assert report["skipped"]["unknown_emotion"]["items"][0] == {
      "file": str(paths["train"]), "key": "2", "position": 1, "value": "joy"}
  assert report["skipped"]["bad_json_entry"]["items"][0]["key"] == "3"
  assert report["skipped"]["empty_utterance"]["items"][0]["key"] == "4"


def test_cli_prints_what_it_skipped(tmp_path):
  csv_path, images, expected, _ = build_raw(tmp_path, n_plain=6)
  out = tmp_path / "ready_cli"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  cmd = [sys.executable, "-m", "sevlm_jax.data.prepare", f"--csv={csv_path}", f"--images={images}",
         f"--out={out}", "--image_size=8", "--workers=2", "--text_preprocessing=raw"]
  result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
  for reason in ("unknown_emotion", "empty_utterance", "missing_image", "unreadable_image", "unicode_normal_form"):
    assert reason in result.stdout
  assert sum(records.load_meta(out)["splits"][s]["images"] for s in records.SPLITS) == len(expected)
  again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
  assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_reader_helpers(prepared):
  out, _, expected, _, csv_path = prepared
  from sevlm_jax.data import images as images_lib
  assert records.is_complete(out) and not records.is_complete(out.parent)
  train = records.load_annotations(out, "train")
  assert len(pipeline.training_images(out)) == sum(len(set(r["emotions"])) >= 2 for r in train)
  texts, labels = records.split_utterances(out, "train")
  assert texts == [u for r in train for u in r["utterances"]]
  assert labels == [e for r in train for e in r["emotions"]]
  few_texts, few_labels = records.split_utterances(out, "train", limit=7)
  assert len(few_texts) == 7 and all(t in texts for t in few_texts)
  assert (few_texts, few_labels) == records.split_utterances(out, "train", limit=7)
  # Ingestion and inference share one preprocessing function.
  rec = records.load_split(out, "train")[0]
  path = csv_path.parent / "wikiart" / rec["art_style"] / (unicodedata.normalize("NFD", rec["painting"]) + ".jpg")
  if not path.exists():
    path = csv_path.parent / "wikiart" / rec["art_style"] / (rec["painting"] + ".jpg")
  np.testing.assert_array_equal(rec["image"], images_lib.load_image(path, SIZE))


def test_prepare_function_takes_the_command_spec(tmp_path):
  from sevlm_jax.data import prepare
  images = tmp_path / "img"
  _save_image(images, "S", "a")
  (tmp_path / "t.json").write_text(json.dumps(
      {"k": {"emotions": ["awe", "fear"], "explanations": ["big", "dark"], "image_name": "S/a.jpg"}}))
  out = prepare.prepare(f"train={tmp_path / 't.json'}", images, tmp_path / "out", image_size=8, workers=0,
                        text_preprocessing="raw",
                        progress=False)
  assert [r["image_id"] for r in records.load_annotations(out, "train")] == ["k"]
  with pytest.raises(ValueError, match="not a mix"):
    prepare.parse_inputs("train=a.json,b.json")


def test_the_format_registry_is_the_one_list_of_sources_and_formats(tmp_path):
  csv_path = _csv_with(tmp_path, ["S,a,awe,big sky,1"])
  raw = ml_collections.ConfigDict({"source": "", "csv": str(csv_path), "images": str(tmp_path / "img")})
  config = ml_collections.ConfigDict({"data": raw})
  for fmt in formats.FORMATS.values():  # every format is a config source, mapped to its name
    raw.source = fmt.config_source
    assert sources.check_data_source(config, str(tmp_path / "ready")) == fmt.name
  raw.source = "artemis_v3"
  with pytest.raises(errors.ConfigError, match="is not one of") as e:
    sources.check_data_source(config, str(tmp_path / "ready"))
  listed = str(e.value).split("is not one of ", 1)[1].split(", ")
  assert listed == [f.config_source for f in formats.FORMATS.values()] + ["ready", "demo", "tfds"]
  # prepare's --format takes every format (the command then wants --csv), and only those.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  for choice in (*formats.FORMATS, "auto", "v3"):
    result = subprocess.run([sys.executable, "-m", "sevlm_jax.data.prepare", f"--format={choice}"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert ("--csv is required" in result.stderr) == (choice != "v3"), result.stderr


# ----------------------------------------------------------------------------- strict input


def _csv_with(tmp_path, lines: list[str], name="a.csv") -> pathlib.Path:
  path = tmp_path / name
  path.write_text("art_style,painting,emotion,utterance,repetition\n" + "\n".join(lines) + "\n")
  (tmp_path / "img").mkdir(exist_ok=True)
  return path


def _prepare(tmp_path, csv_path):
  return prepare.prepare_ready(csv_path, tmp_path / "img", tmp_path / "out", workers=0,
                               text_preprocessing="raw",
                               progress=False, log=lambda *a: None)


def test_a_stray_quote_is_an_error_naming_its_line_not_a_swallowed_data_set(tmp_path):
  rows = [f"Style,p{i},awe,a calm sea number {i},5" for i in range(40)]
  rows[9] = 'Style,p9,awe,"a calm sea number 9,5'  # the quote is never closed
  with pytest.raises(errors.InputError, match=r"a.csv: the row at line 11 opens a quoted field that is never closed") as e:
    _prepare(tmp_path, _csv_with(tmp_path, rows))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()
  rows[30] = 'Style,p30,awe,the quote closes here",5'  # rows 11..32 would become one utterance
  with pytest.raises(errors.InputError, match=r"b.csv: the row at line 11 has a quoted field "
                                              r"running over 22 lines \(to line 32\)"):
    _prepare(tmp_path, _csv_with(tmp_path, rows, name="b.csv"))


def test_a_row_with_too_many_fields_is_an_error_naming_its_line(tmp_path):
  rows = ["Style,p0,awe,calm,5", "Style,p1,fear,dark, stormy and cold,5"]
  with pytest.raises(errors.InputError, match=r"a.csv: line 3 has 6 fields, the header 5"):
    _prepare(tmp_path, _csv_with(tmp_path, rows))


def test_a_quoted_line_break_inside_an_utterance_is_accepted(tmp_path):
  _save_image(tmp_path / "img", "Style", "p0")
  _save_image(tmp_path / "img", "Style", "p1")
  rows = ['Style,p0,awe,"a calm sea\nunder the sun",5', "Style,p1,fear,dark,5"]
  out, report = prepare.prepare_ready(_csv_with(tmp_path, rows), tmp_path / "img", tmp_path / "out",
                                      workers=0, text_preprocessing="raw", progress=False,
                                      split_loads=(1.0, 0.0, 0.0), log=lambda *a: None)
  assert report["totals"]["annotations_kept"] == 2


def test_an_empty_or_wholly_invalid_csv_is_an_error(tmp_path):
  with pytest.raises(errors.InputError, match=r"no usable annotation in .*a.csv: 0 rows read"):
    _prepare(tmp_path, _csv_with(tmp_path, []))
  bad = _csv_with(tmp_path, ["Style,p0,joy,happy,5", "Style,p1,awe,,5"], name="b.csv")
  with pytest.raises(errors.InputError, match=r"b.csv: 2 rows read, skipped: 1 unknown_emotion, "
                                              r"1 empty_utterance"):
    _prepare(tmp_path, bad)


def test_a_non_utf8_header_names_the_file(tmp_path):
  path = tmp_path / "latin1.csv"
  path.write_bytes("art_style,painting,emotion,utterance,répétition\nS,p,awe,x,5\n".encode("latin-1"))
  (tmp_path / "img").mkdir()
  with pytest.raises(errors.InputError, match=r"latin1.csv: not UTF-8"):
    _prepare(tmp_path, path)


def test_a_killed_prepare_leaves_a_folder_the_next_run_removes(tmp_path):
  """kill -9 in the middle of writing: the next run cleans up the dead run's folder only."""
  csv_path = build_raw(tmp_path, n_plain=200)[0]
  script = ("import sys, time\n"
            "from sevlm_jax.data import images, prepare\n"
            "load = images.load_image_job\n"
            "def slow(job):\n"
            "  time.sleep(0.05)\n"
            "  return load(job)\n"
            "images.load_image_job = slow\n"
            f"prepare.prepare_ready({str(csv_path)!r}, {str(csv_path.parent / 'wikiart')!r}, "
            f"{str(tmp_path / 'out')!r}, image_size=8, workers=0, text_preprocessing='raw', "
            "progress=False)\n")
  proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
  try:
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.incomplete-*")) and time.monotonic() < deadline:
      time.sleep(0.1)
    time.sleep(0.5)
  finally:
    proc.kill()
    proc.wait()
  (leftover,) = tmp_path.glob(".out.incomplete-*")
  alive = tmp_path / f".out.incomplete-{os.getpid()}-0000beef"  # a live process's: not touched
  alive.mkdir()
  _, report = prepare.prepare_ready(csv_path, csv_path.parent / "wikiart", tmp_path / "out",
                                    image_size=8, workers=0,
                                    text_preprocessing="raw", progress=False, log=lambda *a: None)
  assert not leftover.exists() and alive.exists()
  assert records.is_complete(tmp_path / "out")
