"""Validation BLEU-4 (model selection, patience) with the COCO toolkit's PTB tokenizer, as the
public code validates (artEmisX_train.py:154-157: COCOEvalCap, whose evaluate() runs
PTBTokenizer over references and results, then Bleu(4)); train.eval_bleu_tokenizer."""

import pytest

from sevlm_jax import errors
from sevlm_jax.evaluation import evaluate
from sevlm_jax.evaluation import metrics
from helpers import load_config

# Contractions, hyphens, possessives and punctuation: where PTB and the regex stand-in differ.
PREDICTIONS = {0: "it's a dog's life, isn't it?", 1: "the well-known sea-side scene feels calm",
               2: "i can't stop looking at the man's red hat", 3: "dark"}
REFERENCES = {
    0: ["it's a dog's life and he isn't sad", "the dog's face isn't happy"],
    1: ["a well-known sea-side scene, calm and blue", "the sea is calm"],
    2: ["i can't look away from the man's red hat!", "the red hat of the man"],
    3: ["it is very dark", "dark colours everywhere"],
}


def coco_toolkit_bleu4(predictions, references) -> float:
  """What COCOEvalCap.evaluate() computes for BLEU-4, with pycocoevalcap's own classes."""
  from pycocoevalcap.bleu.bleu import Bleu  # pylint: disable=import-outside-toplevel
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=import-outside-toplevel
  metrics.java_executable()  # its Java on PATH, or the bundled one
  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in references.items()})
  res = tokenizer.tokenize({i: [{"caption": p}] for i, p in predictions.items()})
  return Bleu(4).compute_score(gts, res, verbose=0)[0][3]


@pytest.fixture
def java_on_path(monkeypatch):
  """pycocoevalcap's PTBTokenizer starts the `java` on PATH: put the one the metrics use first."""
  import os  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("PATH", os.path.dirname(metrics.java_executable()) + os.pathsep + os.environ["PATH"])


def test_ptb_validation_bleu4_is_the_coco_toolkits(java_on_path):
  want = coco_toolkit_bleu4(PREDICTIONS, REFERENCES)
  assert metrics.quick_bleu4(PREDICTIONS, REFERENCES, tokenizer="ptb") == pytest.approx(want, rel=1e-12)
  # The regex stand-in tokenizes these texts otherwise, so its BLEU-4 moves.
  assert metrics.quick_bleu4(PREDICTIONS, REFERENCES, tokenizer="regex") != pytest.approx(want, rel=1e-3)


def test_unknown_tokenizer_and_empty_input():
  with pytest.raises(ValueError, match="tokenizer='nltk'; choose one of ptb, regex"):
    metrics.quick_bleu4(PREDICTIONS, REFERENCES, tokenizer="nltk")
  assert metrics.quick_bleu4({}, REFERENCES, tokenizer="ptb") == 0.0


def test_the_config_picks_ptb_and_checks_the_choice():
  config = load_config("demo")
  assert config.train.eval_bleu_tokenizer == "ptb"
  evaluate.check_config(config)
  config.train.eval_bleu_tokenizer = "nltk"
  with pytest.raises(errors.ConfigError, match="train.eval_bleu_tokenizer='nltk'; choose one of ptb, regex"):
    evaluate.check_config(config)
