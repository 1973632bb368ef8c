"""The HTML evaluation report: what evaluation writes for the shared tiny run, and its parts.

The tiny run's model is barely trained (every prediction is wrong), so the right / wrong / no
majority cases, and escaping, are checked on reports rebuilt from the same run with edited
predictions.
"""

import base64
import html
import io
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from sevlm_jax.evaluation import report
from sevlm_jax.evaluation import trace_files
from sevlm_jax.data import records
from sevlm_jax.vocab import EMOTIONS
from helpers import demo_root, load_config

EVIL = '<script>alert("x")</script> & <img src=x onerror="alert(1)">'


@pytest.fixture(scope="module")
def ready_dir(tmp_path_factory):
  return demo_root(tmp_path_factory) / "ready"


@pytest.fixture(scope="module")
def saved(tiny_run):
  """(results, predictions) that evaluation saved for the test split."""
  results = json.loads((tiny_run / "metrics_test.json").read_text())
  preds = json.loads((tiny_run / "predictions_test.json").read_text())
  return results, preds


class Page(HTMLParser):
  """The parts of a report the tests read: cards, images, tables' cells, select options."""

  def __init__(self, text):
    super().__init__()
    self.stack = []  # (tag, attrs) of the open elements
    self.cards = {"gallery": [], "worst-items": []}
    self.images, self.options, self.scripts = [], {}, []
    self.tables = []  # each a list of rows, each a list of cell texts
    self.attributes = []  # (tag, name) of every attribute of every element
    self.text = text
    self.feed(text)

  def _inside(self, element_id):
    return any(a.get("id") == element_id for _, a in self.stack)

  def handle_starttag(self, tag, attrs):
    self.attributes += [(tag, name) for name, _ in attrs]
    attrs = dict(attrs)
    if tag in ("img", "meta", "link", "input", "br"):  # void elements
      if tag == "img":
        self.images.append(attrs)
        card = next((a for t, a in reversed(self.stack)
                     if t == "div" and "item" in a.get("class", "").split()), None)
        if card is not None:  # the thumbnail of the card it is in
          card["img"] = attrs["src"]
      return
    self.stack.append((tag, attrs))
    if tag == "div" and "item" in attrs.get("class", "").split():
      attrs["text"] = []
      for where in self.cards:
        if self._inside(where):
          self.cards[where].append(attrs)
    if tag == "table":
      self.tables.append([])
    if tag == "tr":
      self.tables[-1].append([])
    if tag == "script":
      self.scripts.append(attrs)
    if tag == "option":
      select = next(a for t, a in reversed(self.stack) if t == "select")
      self.options.setdefault(select["data-filter"], []).append(attrs["value"])

  def handle_endtag(self, tag):
    while self.stack:
      if self.stack.pop()[0] == tag:
        break

  def handle_data(self, data):
    for _, attrs in self.stack:
      if "text" in attrs:
        attrs["text"].append(data)
    if self.stack and self.stack[-1][0] in ("td", "th") and self.tables and self.tables[-1]:
      self.tables[-1][-1].append(data.strip())


def table_with(page, header):
  return next(t for t in page.tables if t and t[0] and t[0][0] == header)


def card_text(card):
  return " ".join("".join(card["text"]).split())


def card_index(card):
  """The image index of a card, from its thumbnail's name."""
  return int(card["img"].split("/")[1].split(".")[0])


ROLES = ("right_evil", "right", "no_majority", "wrong_named", "wrong_evil")
EXPECTED_OUTCOME = {"right_evil": "right", "right": "right", "no_majority": "none",
                    "wrong_named": "wrong", "wrong_evil": "wrong"}


def edited_predictions(preds):
  """Predictions with every outcome (right, wrong, no majority) and hostile text, and
  {role: position} of the edited ones."""
  out = [dict(p) for p in preds]
  roles = dict(zip(ROLES, [i for i, p in enumerate(out) if p["dominant_emotion"]]))
  assert len(roles) == len(ROLES), "the tiny run's test split has too few images with a majority"
  for role in ("right_evil", "right"):
    out[roles[role]]["emotion"] = out[roles[role]]["dominant_emotion"]
  out[roles["right_evil"]]["explanation"] = EVIL
  out[roles["right"]]["explanation"] = out[roles["right"]]["references"][0]
  out[roles["no_majority"]]["dominant_emotion"] = None
  wrong = out[roles["wrong_named"]]
  wrong["emotion"] = next(e for e in EMOTIONS if e != wrong["dominant_emotion"])
  wrong["explanation"] = wrong["references"][0]  # wrong emotion, but an annotator's very words
  out[roles["wrong_evil"]]["emotion"] = "<em>awe</em>"
  out[roles["wrong_evil"]]["image_id"] = '"><script>alert(2)</script>'
  return out, roles


@pytest.fixture(scope="module")
def edited(tiny_run, saved, ready_dir, tmp_path_factory):
  """A report rebuilt in a copy of the run from edited predictions: (page text, preds, workdir)."""
  workdir = tmp_path_factory.mktemp("edited_run")
  shutil.copy(tiny_run / "metrics.jsonl", workdir / "metrics.jsonl")
  results, preds = saved
  preds, roles = edited_predictions(preds)
  path = report.write_report(str(workdir), "test", results, preds, str(ready_dir), worst_k=4)
  return (workdir / "report_test.html").read_text(encoding="utf-8"), preds, roles, path


# ----------------------------------------------------------------------------- what evaluation wrote


def test_evaluation_writes_a_self_contained_report(tiny_run, saved):
  _, preds = saved
  assert load_config("demo").eval.report is True
  text = (tiny_run / "report_test.html").read_text(encoding="utf-8")
  page = Page(text)
  # Nothing from the network: no external script, style sheet, font or image.
  assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
  assert "@import" not in text and "url(" not in text
  assert all("src" not in s for s in page.scripts) and len(page.scripts) == 1
  for img in page.images:
    assert img["src"].startswith("report_test/"), img
  # One thumbnail per test image, a small PNG of the image.
  for p in preds:
    with Image.open(tiny_run / "report_test" / f"{p['image_index']}.png") as im:
      assert im.format == "PNG" and max(im.size) <= report.THUMB_SIZE and im.mode == "RGB"
  assert not list(tiny_run.glob("report_test*.tmp*")) and not list(tiny_run.glob("report_test/*.tmp*"))


def test_metrics_are_in_the_report(tiny_run, saved):
  results, _ = saved
  page = Page((tiny_run / "report_test.html").read_text(encoding="utf-8"))
  headline = {row[0]: row[1] for row in table_with(page, "metric")[1:]}
  assert headline["ACC"] == f"{results['ACC']:.3f}"
  assert headline["EA"] == f"{results['EA']:.3f}"
  assert headline["EA judge held-out accuracy"] == f"{results['EA_judge_heldout_accuracy']:.3f}"
  assert headline["Unique"] == f"{results['Unique']:.3f}"
  captions = {row[0]: row[1:3] for row in table_with(page, "caption metric")[1:]}
  for name in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
    assert captions[name] == [f"{results['captions'][name]:.3f}",
                              f"{results['captions_filtered'][name]:.3f}"], name
  per_emotion = {row[0]: row[1:3] for row in table_with(page, "dominant emotion")[1:]}
  assert list(per_emotion) == list(EMOTIONS)
  for name, row in results["per_emotion_accuracy"].items():
    acc = "–" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
    assert per_emotion[name] == [str(row["support"]), acc], name
  confusion = table_with(page, "dominant \\ predicted")
  assert confusion[0][1:] == list(EMOTIONS) + ["(none)"]
  assert [[int(c) for c in row[1:]] for row in confusion[1:]] == results["confusion_matrix"]


def test_every_test_image_is_in_the_gallery(tiny_run, saved, ready_dir):
  _, preds = saved
  page = Page((tiny_run / "report_test.html").read_text(encoding="utf-8"))
  cards = {card_index(c): c for c in page.cards["gallery"]}
  assert sorted(cards) == sorted(p["image_index"] for p in preds)
  annotations = records.load_annotations(ready_dir, "test")
  for p in preds:
    card, text = cards[p["image_index"]], card_text(cards[p["image_index"]])
    assert p["image_id"] in text and p["emotion"] in text
    assert card["data-true"] == (p["dominant_emotion"] or "none")
    # The barely trained model names no emotion: wrong where there is a majority.
    assert card["data-outcome"] == ("wrong" if p["dominant_emotion"] else "none")
    assert card["data-pred"] == report.NO_EMOTION
    for emotion, utterance in zip(annotations[p["image_index"]]["emotions"],
                                  annotations[p["image_index"]]["utterances"]):
      assert f"{EMOTIONS[emotion]}: {' '.join(utterance.split())}" in text
  assert f"Showing all {len(preds)} images" in page.text


def test_training_curves_are_charts(tiny_run):
  text = (tiny_run / "report_test.html").read_text(encoding="utf-8")
  charts = re.findall(r"<svg class=\"chart\".*?</svg>", text, re.S)
  assert len(charts) == 2 and "training loss" in charts[0] and "validation ACC" in charts[1]
  curves = report.load_curves(str(tiny_run / "metrics.jsonl"))
  loss_line = re.findall(r'<polyline points="([^"]+)"', charts[0])[0]
  assert len(loss_line.split()) == len(curves["train"]["loss"]) == 3  # steps 4, 8, 12
  assert len(re.findall("<polyline", charts[1])) == 2  # acc and bleu4


def test_report_rebuilt_from_the_saved_files_is_the_same(tiny_run, ready_dir, tmp_path):
  for name in ("metrics.jsonl", "metrics_test.json", "predictions_test.json", "trace_test.npz"):
    shutil.copy(tiny_run / name, tmp_path / name)
  path = report.write_report_from_files(str(tmp_path), "test", str(ready_dir))
  assert path == str(tmp_path / "report_test.html")
  assert (tmp_path / "report_test.html").read_bytes() == (tiny_run / "report_test.html").read_bytes()
  for png in (tiny_run / "report_test").iterdir():
    assert (tmp_path / "report_test" / png.name).read_bytes() == png.read_bytes()


def test_evaluation_saves_small_traces_of_the_gallery(tiny_run, saved):
  """trace_<split>.npz: float16 maps and VAD for the gallery's images, whose words are those of
  the saved predictions."""
  _, preds = saved
  with np.load(tiny_run / "trace_test.npz", allow_pickle=False) as f:
    assert f["attention"].dtype == np.float16 and f["vad"].dtype == np.float16
  traces = trace_files.load_traces(str(tiny_run / "trace_test.npz"))
  assert sorted(traces) == sorted(p["image_index"] for p in preds)  # fewer than MAX_GALLERY
  for p in preds:
    t = traces[p["image_index"]]
    generated = p["text"][len("the emotion is"):].split()
    assert t["words"] == (p["explanation"].split() if "because" in generated else generated)
    assert t["attention"].shape[0] == len(t["words"]) and t["vad"].shape == (len(t["tokens"]), 3)
    np.testing.assert_allclose(t["attention"].sum(axis=(1, 2)), 1.0, atol=1e-2)  # float16


def test_traces_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  entries = {7: {"words": ["dark", "sky,"], "attention": rng.random((2, 3, 3), np.float32),
                 "tokens": [" dark", " sky", ","], "vad": rng.random((3, 3), np.float32)},
             2: {"words": [], "attention": np.zeros((0, 3, 3), np.float32), "tokens": [],
                 "vad": np.zeros((0, 3), np.float32)}}
  trace_files.save_traces(str(tmp_path / "t.npz"), entries)
  got = trace_files.load_traces(str(tmp_path / "t.npz"))
  assert sorted(got) == [2, 7] and got[2]["words"] == [] and got[2]["attention"].shape == (0, 3, 3)
  assert got[7]["words"] == ["dark", "sky,"] and got[7]["tokens"] == [" dark", " sky", ","]
  np.testing.assert_allclose(got[7]["attention"], entries[7]["attention"], atol=1e-3)
  np.testing.assert_allclose(got[7]["vad"], entries[7]["vad"], atol=1e-3)


def test_cards_carry_each_words_map_and_a_vad_chart(tiny_run):
  text = (tiny_run / "report_test.html").read_text(encoding="utf-8")
  text = text[text.index('id="gallery"'):]  # the gallery's cards (worst cases repeat some)
  traces = trace_files.load_traces(str(tiny_run / "trace_test.npz"))
  cards = []
  for chunk in text.split('<div class="item ')[1:]:
    data = re.search(r'data-grid="(\d+)" data-attn="([^"]*)"', chunk.split(">", 1)[0])
    if data:
      cards.append((int(data.group(1)), data.group(2),
                    int(re.search(r"#(\d+)\)</div>", chunk).group(1)), chunk))
  assert len(cards) == sum(1 for t in traces.values() if t["words"])
  for grid, data, index, chunk in cards:
    t = traces[index]
    maps = np.frombuffer(base64.b64decode(data), np.uint8).reshape(-1, grid, grid)
    assert len(maps) == len(t["words"]) and np.all(maps.max(axis=(1, 2)) == 255)
    # The brightest patch of each word is where its attention peaks.
    for m, a in zip(maps, t["attention"]):
      assert m.ravel()[np.argmax(a)] == 255
    assert re.findall(r'<span class="w" data-k="\d+"[^>]*>([^<]*)</span>', chunk) == \
        [html.escape(w) for w in t["words"]]
    chart = re.search(r'<svg class="chart vad-chart".*?</svg>', chunk, re.S).group(0)
    assert len(re.findall("<polyline", chart)) == 3


# ----------------------------------------------------------------------------- edited predictions


def test_text_from_the_data_is_escaped(edited):
  text, _, _, _ = edited
  assert EVIL not in text and html.escape(EVIL) in text
  assert "<em>awe</em>" not in text and "&lt;em&gt;awe&lt;/em&gt;" in text
  assert "<script>alert(2)" not in text
  page = Page(text)
  assert len(page.scripts) == 1  # only the page's own filter script
  assert not [a for a in page.attributes if a[1].startswith("on")]  # no event handler came in
  assert all(img["src"].startswith("report_test/") for img in page.images)
  assert any(EVIL in card_text(c) for c in page.cards["gallery"])  # shown as the text it is


def test_outcomes_and_filters(edited):
  text, preds, roles, path = edited
  assert path.endswith("report_test.html")
  page = Page(text)
  cards = {card_index(c): c for c in page.cards["gallery"]}
  for role, i in roles.items():
    assert cards[preds[i]["image_index"]]["data-outcome"] == EXPECTED_OUTCOME[role], role
  right = cards[preds[roles["right"]]["image_index"]]
  assert right["data-pred"] == right["data-true"] == preds[roles["right"]]["dominant_emotion"]
  assert cards[preds[roles["wrong_named"]]["image_index"]]["data-pred"] in EMOTIONS
  assert cards[preds[roles["wrong_evil"]]["image_index"]]["data-pred"] == report.NO_EMOTION
  assert cards[preds[roles["no_majority"]]["image_index"]]["data-true"] == "none"
  # Each filter offers every value the cards carry, and 'all'.
  assert page.options["true"] == ["all", *EMOTIONS, "none"]
  assert page.options["pred"] == ["all", *EMOTIONS, report.NO_EMOTION]
  assert page.options["outcome"] == ["all", "right", "wrong", "none"]
  for card in page.cards["gallery"]:
    assert card["data-true"] in page.options["true"] and card["data-pred"] in page.options["pred"]


def test_worst_cases_are_the_wrong_ones_with_least_overlap(edited):
  text, preds, roles, _ = edited
  page = Page(text)
  worst = page.cards["worst-items"]
  assert len(worst) == 4 and all(c["data-outcome"] == "wrong" for c in worst)
  overlaps = [float(re.search(r"annotation: ([0-9.]+)", card_text(c)).group(1)) for c in worst]
  assert overlaps == sorted(overlaps)
  # The wrong prediction that copies an annotator's words overlaps fully: not among the worst.
  assert preds[roles["wrong_named"]]["image_index"] not in [card_index(c) for c in worst]


def test_gallery_limit_keeps_the_worst_cases(tiny_run, saved, ready_dir, tmp_path):
  results, preds = saved
  shutil.copy(tiny_run / "metrics.jsonl", tmp_path / "metrics.jsonl")
  report.write_report(str(tmp_path), "test", results, preds, str(ready_dir), max_gallery=3,
                      worst_k=5)
  page = Page((tmp_path / "report_test.html").read_text(encoding="utf-8"))
  assert len(page.cards["gallery"]) == 3 and len(page.cards["worst-items"]) == 5
  assert f"the first 3 of {len(preds)} images" in page.text
  for img in page.images:
    assert (tmp_path / img["src"]).is_file()


# ----------------------------------------------------------------------------- pure parts


def test_load_curves_keeps_the_last_value_of_a_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("\n".join([
      json.dumps({"step": 2, "split": "train", "time": 1.0, "loss": 3.0}),
      json.dumps({"step": 4, "split": "train", "time": 2.0, "loss": 2.0}),
      json.dumps({"step": 4, "split": "val", "time": 2.0, "acc": 0.5, "bleu4": 0.1}),
      json.dumps({"step": 4, "split": "train", "time": 3.0, "loss": 2.5}),  # resumed run
      json.dumps({"step": 6, "split": "train", "time": 4.0, "loss": float("nan")}),
      '{"step": 8, "split": "tr',  # cut off by a kill
  ]) + "\n")
  curves = report.load_curves(str(path))
  assert curves["train"] == {"loss": [(2, 3.0), (4, 2.5)]}
  assert curves["val"] == {"acc": [(4, 0.5)], "bleu4": [(4, 0.1)]}
  assert report.load_curves(str(tmp_path / "missing.jsonl")) == {}


def test_line_chart_edge_cases():
  empty = report.line_chart_svg("nothing <yet>", [])
  assert "no data" in empty and "nothing &lt;yet&gt;" in empty
  one = report.line_chart_svg("one", [("a&b", [(5, 0.5)])])
  assert one.count("<circle") == 1 and "a&amp;b" in one and "nan" not in one
  flat = report.line_chart_svg("flat", [("x", [(0, 1.0), (10, 1.0)]), ("y", [(0, 2.0), (10, 2.0)])])
  assert flat.count("<polyline") == 2 and "nan" not in flat and "inf" not in flat
  assert "no training curves" in report.curves_html({}).lower()


def test_blind_control_is_flagged_and_an_empty_split_renders():
  results = {"split": "test", "per_emotion_accuracy": {}, "confusion_matrix": []}
  page = report.render_report(results, [], [], {}, thumbs="report_test", total=0, images_blanked=True)
  assert "image-blind control" in page and "No wrong predictions" in page
  plain = report.render_report(results, [], [], {}, thumbs="report_test", total=0)
  assert "image-blind" not in plain


def test_unigram_overlap():
  assert report.unigram_f1("The sky is vast!", "the sky is vast") == 1.0
  assert report.unigram_f1("", "the sky") == 0.0 and report.unigram_f1("red red", "blue") == 0.0
  assert report.unigram_f1("red sky", "red sea") == pytest.approx(0.5)
  assert report.best_overlap("red sky", ["blue sea", "red sea"]) == pytest.approx(0.5)
  items = [{"index": i, "outcome": o, "overlap": v}
           for i, (o, v) in enumerate([("wrong", 0.5), ("right", 0.0), ("wrong", 0.1),
                                       ("none", 0.0), ("wrong", 0.1)])]
  assert [it["index"] for it in report.worst_cases(items, 2)] == [2, 4]
  assert [it["index"] for it in report.worst_cases(items, 10)] == [2, 4, 0]


def test_thumbnails_shrink_only_large_images():
  big = report.thumbnail_png(np.zeros((224, 300, 3), np.uint8))
  small = report.thumbnail_png(np.zeros((32, 32, 3), np.uint8))
  with Image.open(io.BytesIO(big)) as a, Image.open(io.BytesIO(small)) as b:
    assert a.size == (128, 96) and b.size == (32, 32)
