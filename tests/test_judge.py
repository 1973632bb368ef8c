"""EA judge: learns a separable task, round-trips through save/load, fails clearly on bad input."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from sevlm_jax.evaluation import judge as judge_lib
from sevlm_jax.vocab import NUM_EMOTIONS
from sevlm_jax.models import emotion_classifier
from helpers import truncate_array_files

_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "emotion_classifier.py"
_spec = importlib.util.spec_from_file_location("emotion_classifier_config", _CONFIG_PATH)
judge_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(judge_configs)

FILLER = [f"w{i}" for i in range(40)]
CUES = [[f"cue{c}a", f"cue{c}b", f"cue{c}c"] for c in range(NUM_EMOTIONS)]  # words that give away the class
WORDS = ["<unk>"] + FILLER + [w for cue in CUES for w in cue]
WORD_IDS = {w: i for i, w in enumerate(WORDS)}


def encode(text):
  """A word-level stand-in for the GPT-2 tokenizer's encode."""
  return [WORD_IDS.get(w, 0) for w in text.split()]


def synthetic(n, seed):
  """Texts of filler words with one cue word of their class at a random place."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_EMOTIONS, n)
  texts = []
  for label in labels:
    words = list(rng.choice(FILLER, rng.integers(3, 12)))
    words.insert(rng.integers(0, len(words) + 1), rng.choice(CUES[label]))
    texts.append(" ".join(words))
  return texts, labels


def tiny_config():
  config = judge_configs.get_config("tiny")
  config.vocab_size = len(WORDS)
  config.num_epochs = 8
  return config


@pytest.fixture(scope="module")
def trained():
  train_texts, train_labels = synthetic(600, seed=0)
  heldout_texts, heldout_labels = synthetic(200, seed=1)
  judge = judge_lib.train_judge(train_texts, train_labels, heldout_texts, heldout_labels, encode, tiny_config())
  return judge, heldout_texts, heldout_labels


def test_learns_separable_task(trained):
  judge, heldout_texts, heldout_labels = trained
  assert judge.heldout_accuracy >= 0.9
  pred = judge.predict(heldout_texts)
  assert pred.dtype == np.int32 and pred.shape == (len(heldout_texts),)
  assert np.mean(pred == heldout_labels) == pytest.approx(judge.heldout_accuracy)
  losses = judge.info["train_loss_per_epoch"]
  assert losses[-1] < losses[0]
  # Fewer texts than a batch, an empty text and a text longer than max_len all work.
  long_text = " ".join(["w1"] * 50 + ["cue3a"])
  assert judge.predict(["cue5b", "", long_text]).shape == (3,)
  assert judge.predict([]).shape == (0,)


def test_training_is_deterministic(trained):
  judge, heldout_texts, _ = trained
  texts, labels = synthetic(600, seed=0)
  config = tiny_config()
  config.num_epochs = 1
  a = judge_lib.train_judge(texts[:100], labels[:100], texts[:10], labels[:10], encode, config)
  b = judge_lib.train_judge(texts[:100], labels[:100], texts[:10], labels[:10], encode, config)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)


def test_save_load_round_trip(trained, tmp_path):
  judge, heldout_texts, _ = trained
  judge.save(tmp_path / "judge")
  # An Orbax checkpoint, complete: its items, and no temporary directory left.
  names = {p.name for p in (tmp_path / "judge").iterdir()}
  assert {"meta", "params"} <= names and not [n for n in names if "tmp" in n], names
  assert not [p.name for p in tmp_path.iterdir() if p.name != "judge"]
  loaded = judge_lib.Judge.load(tmp_path / "judge", encode_fn=encode)
  assert loaded.heldout_accuracy == judge.heldout_accuracy
  assert loaded.config.to_dict() == judge.config.to_dict()
  np.testing.assert_array_equal(loaded.logits(heldout_texts), judge.logits(heldout_texts))
  np.testing.assert_array_equal(loaded.predict(heldout_texts), judge.predict(heldout_texts))
  # Saving again over an existing judge replaces it.
  loaded.save(tmp_path / "judge")
  with pytest.raises(ValueError, match="encode_fn"):
    judge_lib.Judge.load(tmp_path / "judge").predict(["x"])


def test_bad_directories_give_clear_errors(trained, tmp_path):
  judge, _, _ = trained
  with pytest.raises(FileNotFoundError,
                     match="no EA judge in .*expected an Orbax checkpoint with items meta and params"):
    judge_lib.Judge.load(tmp_path / "missing")
  # A judge of the first format (judge.json + params.msgpack) is no judge to this code.
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "judge.json").write_text("{}")
  (tmp_path / "old" / "params.msgpack").write_bytes(b"\x80")
  with pytest.raises(FileNotFoundError, match="no EA judge in"):
    judge_lib.Judge.load(tmp_path / "old")
  # Truncated array files.
  judge.save(tmp_path / "j")
  truncate_array_files(tmp_path / "j" / "params")
  with pytest.raises(ValueError, match=f"corrupt EA judge in {tmp_path / 'j'} .*delete the directory") as e:
    judge_lib.Judge.load(tmp_path / "j")
  assert "\n" not in str(e.value)
  # Meta that is not JSON.
  judge.save(tmp_path / "j")  # replaces the broken judge
  meta_file = tmp_path / "j" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  meta_file.write_text("{not json")
  with pytest.raises(ValueError, match="corrupt EA judge in"):
    judge_lib.Judge.load(tmp_path / "j")
  # Params that do not fit the config.
  meta["config"]["hidden_dim"] += 1
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="do not belong together"):
    judge_lib.Judge.load(tmp_path / "j")


def test_bad_inputs_give_clear_errors():
  config = tiny_config()
  texts, labels = ["cue1a w1", "cue2a"], [1, 2]
  with pytest.raises(ValueError, match="label 9 at row 1"):
    judge_lib.train_judge(texts, [1, 9], texts, labels, encode, config)
  with pytest.raises(ValueError, match="2 texts but 1 labels"):
    judge_lib.train_judge(texts, [1], texts, labels, encode, config)
  with pytest.raises(ValueError, match="no held-out texts"):
    judge_lib.train_judge(texts, labels, [], [], encode, config)
  config.vocab_size = 5
  with pytest.raises(ValueError, match=r"train_texts\[0\].*outside 0..4"):
    judge_lib.train_judge(texts, labels, texts, labels, encode, config)
  del config["seed"]
  with pytest.raises(ValueError, match="lacks \\['seed'\\]"):
    judge_lib.train_judge(texts, labels, texts, labels, encode, config)


def test_empty_texts_and_padding(trained):
  judge, _, _ = trained
  ids = np.array([[3, 4, 5, 0], [0, 0, 0, 0]], np.int32)
  mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], np.int32)
  logits = judge.logits_of_ids(np.pad(ids, ((0, 0), (0, 12))), np.pad(mask, ((0, 0), (0, 12))))
  assert logits.shape == (2, NUM_EMOTIONS) and np.all(np.isfinite(logits))
  # Padding never matters: changing ids under the mask leaves the logits unchanged.
  other = np.where(mask > 0, ids, 7)
  np.testing.assert_array_equal(judge.logits_of_ids(np.pad(other, ((0, 0), (0, 12))), np.pad(mask, ((0, 0), (0, 12)))),
                                logits)
  # Training through empty texts keeps every parameter finite (same shapes as the fixture: no recompilation).
  texts, labels = synthetic(64, seed=2)
  texts[:5] = [""] * 5
  config = tiny_config()
  config.num_epochs = 1
  again = judge_lib.train_judge(texts, labels, texts[:3], labels[:3], encode, config)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(again.params))


def test_model_shapes():
  model = emotion_classifier.from_config(tiny_config())
  ids = np.zeros((2, 16), np.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), ids, ids)["params"]
  assert params["embed"]["embedding"].shape == (len(WORDS), 16)
  assert params["logits"]["kernel"].shape == (16, NUM_EMOTIONS)
  assert params["mlp"]["kernel"].shape == (4 * 16, 16)  # mean and max of both LSTM directions


def test_configs_have_every_key():
  for variant in ("", "tiny"):
    config = judge_configs.get_config(variant)
    assert all(k in config for k in judge_lib.REQUIRED_KEYS)
  assert judge_configs.get_config().vocab_size == 50257
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    judge_configs.get_config("huge")
