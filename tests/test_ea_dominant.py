"""EA's own dominant-emotion rule (eval.ea_dominant) over its own annotations (eval.ea_histogram).

The public code's EA (its single_caption_per_image.py) takes an image's dominant emotion by `>`
half over the annotations the length filters kept, while its ACC reads the histogram of all of
them (ArtEmis's image-emotion-histogram.csv). A prepared record keeps both.
"""

import collections

import ml_collections
import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax.data import dominant
from sevlm_jax.data import records
from sevlm_jax.data import sources
from sevlm_jax.evaluation import evaluate
from sevlm_jax.evaluation import metrics as metrics_lib
from sevlm_jax.vocab import EMOTIONS
from helpers import load_config, prepare_one_style, random_emotion_lists

LONG = "the colours of this painting remind me of a warm summer day"  # kept
SHORT = "so very dark"  # under ArtEmis's 5 tokens: the length filter drops it
PAINTINGS = {  # painting: (emotion, utterance) of its annotations
    # all: awe 2/5, no dominant; kept: awe 2/3
    "kept_only": [("awe", LONG), ("awe", LONG), ("fear", LONG), ("anger", SHORT),
                  ("sadness", SHORT)],
    # all: awe 3/5; kept: one each of awe, fear, anger: none
    "all_only": [("awe", LONG), ("awe", SHORT), ("awe", SHORT), ("fear", LONG), ("anger", LONG)],
    # all: contentment exactly half (no dominant by `>`); kept: 2/3
    "half": [("contentment", LONG), ("contentment", LONG), ("awe", LONG), ("fear", SHORT)],
    "tie": [("fear", LONG), ("fear", LONG), ("sadness", LONG), ("sadness", LONG)],
}


def public_dominant_maximizer(emotion_list):
  """The public code's copy (single_caption_per_image.py:51-67), restated on a list: the most
  frequent element if it appears more than half the time (its tie test can then never fire)."""
  counts = collections.Counter(emotion_list).most_common()
  has = counts[0][1] > len(emotion_list) / 2 and (len(counts) < 2 or counts[1][1] != counts[0][1])
  return counts[0][0] if has else -1


def test_half_is_the_public_copy_of_dominant_maximizer():
  for emotions, h in random_emotion_lists(max_len=9):
    assert dominant.dominant_half(h) == public_dominant_maximizer(emotions), emotions


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
  """The paintings prepared with ArtEmis's text preprocessing, so its length filters run."""
  rows = [(name, e, text, 5) for name, annotations in PAINTINGS.items() for e, text in annotations]
  return prepare_one_style(tmp_path_factory.mktemp("ea_dominant"), rows, "artemis")


def test_records_hold_all_annotations_histogram_and_the_kept_counts(ready):
  by_name = {r["painting"]: r for r in records.load_annotations(ready, "train")}
  for name, annotations in PAINTINGS.items():
    rec = by_name[name]
    everyone = np.bincount([EMOTIONS.index(e) for e, _ in annotations], minlength=9)
    kept = np.bincount([EMOTIONS.index(e) for e, t in annotations if t == LONG], minlength=9)
    np.testing.assert_allclose(dominant.ea_histogram(rec, "acc"), everyone / everyone.sum(), atol=1e-6)
    np.testing.assert_allclose(dominant.ea_histogram(rec, "kept"), kept / kept.sum(), atol=1e-6)


class _Judge:
  """Reads every explanation as awe."""
  heldout_accuracy = 0.5

  def predict(self, texts):
    return np.full(len(texts), EMOTIONS.index("awe"), np.int32)


def _score(ready, monkeypatch, acc_rule, ea_dominant, ea_histogram):
  monkeypatch.setattr(metrics_lib, "caption_scores", lambda hyp, refs, spice=False: {})  # no Java
  index = {r["painting"]: r["index"] for r in records.load_annotations(ready, "train")}
  preds = [{"image_index": index[name], "emotion": "awe", "explanation": "words"}
           for name in PAINTINGS]
  config = ml_collections.ConfigDict({"eval": {
      "dominant": acc_rule, "spice": False, "ea_dominant": ea_dominant, "ea_histogram": ea_histogram}})
  return evaluate.score_predictions(preds, ready, "train", config, _Judge())


def test_the_public_ea_rule_counts_other_images_than_acc(ready, monkeypatch):
  results = _score(ready, monkeypatch, "half", "half", "kept")
  assert results["dominant_rule"] == "half" and results["num_with_dominant"] == 1  # all_only
  assert results["ACC"] == 1.0
  assert results["EA_dominant_rule"] == "half over the kept annotations"
  assert results["num_with_EA_dominant"] == 2  # kept_only (awe) and half (contentment)
  assert results["EA"] == 0.5


def test_by_default_ea_counts_the_images_acc_counts(ready, monkeypatch):
  for acc_rule, with_dominant in (("half", 1), ("artemis_no_tie", 2)):
    results = _score(ready, monkeypatch, acc_rule, "acc", "acc")
    assert results["EA_dominant_rule"] == f"{acc_rule} over the histogram ACC reads"
    assert results["num_with_EA_dominant"] == results["num_with_dominant"] == with_dominant
  # artemis_no_tie: all_only (awe) and half (contentment, exactly half, alone)
  assert results["EA"] == 0.5


def test_ea_rule_and_histogram_are_checked():
  config = load_config("demo")
  sources.check_config(config)
  for field in ("ea_dominant", "ea_histogram"):
    bad = load_config("demo")
    bad.eval[field] = "majority"
    with pytest.raises(errors.ConfigError, match=f"eval.{field}='majority'; choose one of"):
      sources.check_config(bad)


def test_the_report_names_eas_rule_only_where_it_differs_from_accs():
  from sevlm_jax.evaluation import report  # pylint: disable=import-outside-toplevel
  same = {"dominant_rule": "half", "EA_dominant_rule": "half over the histogram ACC reads",
          "num_with_EA_dominant": 241}
  assert report._ea_rule(same) == ""
  public = dict(same, EA_dominant_rule="half over the kept annotations", num_with_EA_dominant=239)
  assert report._ea_rule(public) == ", EA over 239 (rule: half over the kept annotations)"
