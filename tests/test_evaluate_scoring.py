"""The dominant-emotion rules (ArtEmis's tie-excluding one beside the two others) and how
evaluation scores predictions against them."""

import collections
import importlib.util
import pathlib

import ml_collections
import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax import run as run_lib
from sevlm_jax.data import dominant
from sevlm_jax.data import records
from sevlm_jax.evaluation import evaluate
from sevlm_jax.evaluation import metrics as metrics_lib
from sevlm_jax.evaluation import report
from sevlm_jax.vocab import EMOTIONS
from helpers import prepare_one_style, random_emotion_lists


def _hist(*emotions):
  return dominant.histogram_from_counts(np.bincount([EMOTIONS.index(e) for e in emotions], minlength=9))


def test_the_three_rules_on_a_majority_a_tie_half_and_no_majority():
  cases = {  # emotions: (half, artemis, artemis_no_tie)
      ("awe", "awe", "awe", "fear", "anger"): (1, 1, 1),
      ("fear", "sadness", "sadness", "fear"): (-1, 6, -1),  # a tie at exactly half
      ("contentment", "anger", "contentment", "disgust", "contentment", "awe"): (-1, 2, 2),  # half, alone
      ("awe", "awe", "fear", "fear", "anger"): (-1, -1, -1),
  }
  for emotions, want in cases.items():
    h = _hist(*emotions)
    got = tuple(dominant.RULES[r](h) for r in ("half", "artemis", "artemis_no_tie"))
    assert got == want, emotions


def _dominant_maximizer(emotion_list):
  """ArtEmis's evaluation rule, restated on a list: the most frequent element if it appears at
  least half the time and the runner-up does not appear as often."""
  counts = sorted(collections.Counter(emotion_list).values())
  has = counts[-1] >= len(emotion_list) / 2 and (len(counts) < 2 or counts[-2] != counts[-1])
  return collections.Counter(emotion_list).most_common(1)[0][0] if has else -1


def test_artemis_no_tie_is_artemis_dominant_maximizer():
  for emotions, h in random_emotion_lists(max_len=8):
    assert dominant.dominant_artemis_no_tie(h) == _dominant_maximizer(emotions), emotions


# --- score_predictions ------------------------------------------------------

PAINTINGS = {  # painting: emotions of its annotations
    "majority": ["awe", "awe", "awe", "fear"],
    "tie": ["fear", "sadness", "fear", "sadness"],
    "half": ["anger", "anger", "awe", "fear"],
}


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
  rows = [(name, e, f"{name} makes me feel {e}", 4) for name, emotions in PAINTINGS.items()
          for e in emotions]
  return prepare_one_style(tmp_path_factory.mktemp("scoring"), rows, "raw")


class _Judge:
  heldout_accuracy = 0.5

  def predict(self, texts):
    return np.zeros(len(texts), np.int32)


def _score(ready, monkeypatch, emotions: dict, rule: str):
  """score_predictions for one prediction per painting; the caption metrics only record which
  images they were given (no Java)."""
  scored = []
  monkeypatch.setattr(metrics_lib, "caption_scores",
                      lambda hyp, refs, spice=False: scored.append(sorted(hyp)) or {"num_items": len(hyp)})
  index = {r["image_id"]: r["index"] for r in records.load_annotations(ready, "train")}
  preds = [{"image_index": index[f"S/{name}"], "emotion": emotion, "explanation": f"{name} words"}
           for name, emotion in emotions.items()]
  config = ml_collections.ConfigDict({"eval": {"dominant": rule, "spice": False,
                                               "ea_dominant": "acc", "ea_histogram": "acc"}})
  results = evaluate.score_predictions(preds, ready, "train", config, _Judge())
  all_images, filtered = scored
  names = {i: n.split("/")[1] for n, i in index.items()}
  return results, [names[i] for i in filtered], preds


def test_an_unparseable_prediction_on_an_image_without_a_dominant_emotion_is_not_right(ready, monkeypatch):
  results, filtered, preds = _score(ready, monkeypatch, {"majority": "awe", "tie": "no emotion at all",
                                                         "half": "anger"}, "half")
  assert filtered == ["majority"]  # the tie (-1) and the unparseable text (-1) are not a match
  assert results["captions_filtered"]["num_items"] == 1
  assert results["ACC"] == 1.0 and results["num_with_dominant"] == 1
  outcomes = {item["image_id"]: item["outcome"] for item in report.gallery_items(
      preds, records.load_annotations(ready, "train"))}
  assert outcomes == {"S/majority": "right", "S/tie": "none", "S/half": "none"}


def test_eval_dominant_picks_the_rule(ready, monkeypatch):
  guesses = {"majority": "awe", "tie": "fear", "half": "anger"}
  for rule, (with_dominant, right) in {"half": (1, ["majority"]),
                                       "artemis": (3, ["half", "majority", "tie"]),
                                       "artemis_no_tie": (2, ["half", "majority"])}.items():
    results, filtered, _ = _score(ready, monkeypatch, guesses, rule)
    assert results["dominant_rule"] == rule
    assert results["num_with_dominant"] == with_dominant and sorted(filtered) == right, rule
    assert results["ACC"] == 1.0


def test_eval_dominant_names_its_choices():
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "sevlm.py"
  spec = importlib.util.spec_from_file_location("sevlm_config_for_scoring_tests", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("artemis_v1")
  assert config.eval.dominant == "half"  # the public code's rule, so the paper's ACC
  config.eval.dominant = "artemis_no_tie"
  run_lib.check_config(config)
  config.eval.dominant = "majority"
  with pytest.raises(errors.ConfigError, match="choose one of half, artemis, artemis_no_tie"):
    run_lib.check_config(config)
