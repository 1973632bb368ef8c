"""EA read by ArtEmis's own judge (judge.source=artemis): its files read without PyTorch, its
logits equal to ArtEmis's PyTorch classifier's, its errors, and an evaluation that names it."""

import json
import pickle
import warnings

import ml_collections
import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax.evaluation import artemis_judge
from sevlm_jax.weights import artemis_clf
from sevlm_jax.weights import torch_module

torch = pytest.importorskip("torch")
import artemis_clf_torch as reference  # pylint: disable=wrong-import-position  (needs torch)

TOL = 1e-5
WORDS = "the sky is dark and sad happy colors make me feel calm angry storm bright".split()
TEXTS = [  # variable lengths, repeated and unknown words (<unk>), one long text
    "the sky is dark",
    "happy",
    "sad sad and the storm",
    "colors make me feel calm and happy because the bright sky",
    "zzz unknown words here",
    "the storm make me feel angry and sad and the sky is dark and the colors are not bright at all",
    "calm",
]


def _save(tmp_path, legacy=False, feature_type="max", **kwargs):
  vocab = reference.make_vocabulary(WORDS)
  model = reference.make_classifier(vocab, feature_type=feature_type, **kwargs)
  clf_path, vocab_path = tmp_path / "best_model.pt", tmp_path / "vocabulary.pkl"
  with warnings.catch_warnings():  # as ArtEmis's torch_save_model
    warnings.simplefilter("ignore")
    reference.save_classifier(model, clf_path, legacy=legacy)
  vocab.save(vocab_path)
  return model, vocab, clf_path, vocab_path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_logits_equal_artemis_pytorch_classifier(tmp_path, legacy):
  model, vocab, clf_path, vocab_path = _save(tmp_path, legacy=legacy)
  judge = artemis_judge.ArtemisJudge.load(clf_path, vocab_path)
  for chunk in (1000, 3):  # ArtEmis's chunk, and chunks whose longest texts differ
    judge.chunk = chunk
    want = reference.ea_logits(model, vocab, TEXTS, batch_size=chunk)
    got = judge.logits(TEXTS)
    assert got.shape == (len(TEXTS), 9)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    np.testing.assert_array_equal(judge.predict(TEXTS), want.argmax(-1))


def test_max_pooling_runs_over_the_chunks_zero_padding_as_artemis_does(tmp_path):
  model, vocab, clf_path, vocab_path = _save(tmp_path)
  judge = artemis_judge.ArtemisJudge.load(clf_path, vocab_path)
  alone = reference.ea_logits(model, vocab, TEXTS[1:2])[0]
  beside_long = reference.ea_logits(model, vocab, TEXTS[1:2] + TEXTS[5:6])[0]
  assert np.abs(alone - beside_long).max() > 1e-3  # ArtEmis's logits of a text depend on its chunk
  np.testing.assert_allclose(judge.logits(TEXTS[1:2])[0], alone, atol=TOL, rtol=0)
  np.testing.assert_allclose(judge.logits(TEXTS[1:2] + TEXTS[5:6])[0], beside_long, atol=TOL, rtol=0)


@pytest.mark.parametrize("feature_type", ["last", "mean"])
def test_the_other_poolings_match_too(tmp_path, feature_type):
  model, vocab, clf_path, vocab_path = _save(tmp_path, feature_type=feature_type, emb_dim=12, lstm_dim=16)
  judge = artemis_judge.ArtemisJudge.load(clf_path, vocab_path)
  np.testing.assert_allclose(judge.logits(TEXTS), reference.ea_logits(model, vocab, TEXTS), atol=TOL, rtol=0)


def test_the_vocabulary_is_read_as_pickled(tmp_path):
  _, vocab, clf_path, vocab_path = _save(tmp_path, emb_dim=8, lstm_dim=8)
  read = artemis_clf.load_vocabulary(vocab_path)
  assert read.word2idx == vocab.word2idx
  assert (read.pad, read.sos, read.eos, read.unk) == (vocab.pad, vocab.sos, vocab.eos, vocab.unk)
  assert read.ids(["sky", "nonsense"]) == [vocab("sky"), vocab.unk]
  spec, _, eos = artemis_clf.load_classifier(clf_path)
  assert (spec.vocab_size, spec.embed_dim, spec.lstm_dim, spec.feature, eos) == (len(vocab), 8, 8, "max", vocab.eos)
  assert [layer.kind for layer in spec.head_layers] == ["linear", "batchnorm", "relu", "linear"]


def _error(fn, *args) -> str:
  with pytest.raises(errors.UserError) as info:
    fn(*args)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_bad_files_stop_with_one_line(tmp_path):
  _, _, clf_path, vocab_path = _save(tmp_path, emb_dim=8, lstm_dim=8)
  load = artemis_judge.ArtemisJudge.load
  assert "no such file" in _error(load, tmp_path / "missing.pt", vocab_path)
  (tmp_path / "junk.pt").write_bytes(b"not a model at all")
  assert "not a torch.save file" in _error(load, tmp_path / "junk.pt", vocab_path)
  (tmp_path / "legacy").mkdir()
  data = _save(tmp_path / "legacy", legacy=True, emb_dim=8, lstm_dim=8)[2].read_bytes()
  truncated = tmp_path / "truncated.pt"
  truncated.write_bytes(data[:len(data) - 100])
  assert "truncated" in _error(load, truncated, vocab_path)
  # A torch.save of something else: the class it holds is named, and nothing of it runs.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.save(torch.nn.GRU(4, 4), tmp_path / "gru.pt")
  assert "torch.nn.modules.rnn.GRU" in _error(load, tmp_path / "gru.pt", vocab_path)
  with open(tmp_path / "list.pkl", "wb") as f:
    pickle.dump(["not", "a", "vocabulary"], f)
  assert "not a pickled ArtEmis Vocabulary" in _error(load, clf_path, tmp_path / "list.pkl")
  assert "is this the right file?" in _error(load, clf_path, clf_path)  # the classifier as vocabulary
  assert "not a torch.save file" in _error(load, vocab_path, vocab_path)  # and the other way round
  other = reference.make_vocabulary(WORDS[:5])
  other.save(tmp_path / "other.pkl")
  assert "do not belong together" in _error(load, clf_path, tmp_path / "other.pkl")


def test_only_expected_classes_are_rebuilt_and_nothing_runs(tmp_path):
  marker = tmp_path / "ran"
  hostile = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # os.system("touch ...") when unpickled
  (tmp_path / "hostile.pkl").write_bytes(hostile)
  assert "os.system" in _error(artemis_clf.load_vocabulary, tmp_path / "hostile.pkl")
  assert not marker.exists()
  # PyTorch < 1.5 pickled each module's `_backend` as a call of this function: read as None.
  old_backend = b"\x80\x02ctorch.nn.backends.thnn\n_get_thnn_function_backend\nq\x00)Rq\x01."
  (tmp_path / "backend.pkl").write_bytes(old_backend)
  assert torch_module.load_pickle(tmp_path / "backend.pkl", (), "a test pickle") is None


def test_judge_config_is_checked(tmp_path):
  _, _, clf_path, vocab_path = _save(tmp_path, emb_dim=8, lstm_dim=8)
  config = ml_collections.ConfigDict({"source": "artemis", "artemis_classifier": "", "artemis_vocabulary": ""})
  assert "judge.artemis_classifier" in _error(artemis_judge.check_config, config)
  config.artemis_classifier = str(clf_path)
  config.artemis_vocabulary = str(tmp_path / "nowhere.pkl")
  assert "judge.artemis_vocabulary" in _error(artemis_judge.check_config, config)
  config.artemis_vocabulary = str(vocab_path)
  artemis_judge.check_config(config)
  config.source = "paper"
  assert "choose one of trained, artemis" in _error(artemis_judge.check_config, config)


def test_evaluation_with_artemis_judge_names_it(tmp_path, tmp_path_factory, monkeypatch, make_random_params):
  """The tiny demo evaluated end to end (random weights instead of a checkpoint) with EA read by an
  ArtEmis classifier over the demo's words: the metrics file and the report name the judge."""
  from helpers import demo_root, tiny_config  # pylint: disable=import-outside-toplevel
  from sevlm_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import records  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import sources  # pylint: disable=import-outside-toplevel
  from sevlm_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel

  root = demo_root(tmp_path_factory)
  config = tiny_config(root)
  texts, _ = records.split_utterances(sources.resolve_ready_dir(config, str(root)), "train")
  vocab = reference.make_vocabulary(sorted({w for t in texts for w in t.split()}))
  model = reference.make_classifier(vocab, emb_dim=16, lstm_dim=16)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    reference.save_classifier(model, tmp_path / "best_model.pt")
  vocab.save(tmp_path / "vocabulary.pkl")
  config.judge.source = "artemis"
  config.judge.artemis_classifier = str(tmp_path / "best_model.pt")
  config.judge.artemis_vocabulary = str(tmp_path / "vocabulary.pkl")
  config.eval.trace_images = 0
  main_lib.check_config(config)
  workdir = tmp_path / "work"
  run = main_lib.run_lib.prepare_run(config, str(workdir))
  monkeypatch.setattr(evaluate.ckpt_lib, "restore_params", lambda *a, **k: (
      make_random_params(run.model.config, std=0.3), {"checkpoint": "random", "step": 0}))  # varied texts
  main_lib.evaluate(config, str(workdir), run)

  metrics = json.loads((workdir / "metrics_test.json").read_text())
  assert metrics["EA_judge"]["source"] == "artemis"
  assert metrics["EA_judge"]["classifier"] == str(tmp_path / "best_model.pt")
  assert metrics["EA_judge"]["vocabulary"] == str(tmp_path / "vocabulary.pkl")
  assert metrics["EA_judge_heldout_accuracy"] is None  # none of ours to show
  assert not (workdir / "judge").exists()  # no judge was trained
  # EA is the ArtEmis classifier's argmax against the dominant emotion, on the same explanations.
  preds = json.loads((workdir / "predictions_test.json").read_text())
  worded = [p for p in preds if p["explanation"].split()]  # ArtEmis's code stops on an empty one
  assert worded
  want = reference.ea_logits(model, vocab, [p["explanation"] for p in worded]).argmax(-1)
  assert [p["judge_emotion"] for p in worded] == [evaluate.vocab.EMOTIONS[i] for i in want]
  page = (workdir / "report_test.html").read_text(encoding="utf-8")
  assert "ArtEmis&#x27;s released classifier" in page or "ArtEmis's released classifier" in page
  assert "not ours" in page
