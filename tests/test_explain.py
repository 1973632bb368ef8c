"""The Predictor's explanations of a chosen emotion, the per-word attention maps, the per-token
VAD, the emotion distribution from the first decoding step, and decoding choices, on the shared
tiny run with large random weights (so that images get different outputs)."""

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from sevlm_jax import errors
from sevlm_jax import vocab
from sevlm_jax.data import records
from sevlm_jax.inference import predictor as inference
from sevlm_jax.inference import trace as trace_lib
from helpers import REPO, compile_cache, demo_root, main_command, subprocess_env, trained_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(tiny_run, make_random_params):
  p = inference.Predictor.from_workdir(str(tiny_run))
  return inference.Predictor(p.config, make_random_params(p.model.config, seed=3, std=0.3),
                             np.load(tiny_run / "vad_table.npy"),
                             output_ids=np.load(tiny_run / "output_vocab.npy"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  test = records.load_split(demo_root(tmp_path_factory) / "ready", "test")
  return [test[i]["image"] for i in range(min(len(test), 5))]


def test_explanation_starts_with_the_forced_emotion(predictor, images):
  for name in ("fear", "something else", "contentment"):
    for p in predictor.explain(images, emotion=name):
      assert p["text"].startswith(f"the emotion is {name} because")
      assert p["emotion"] == name
  chosen = [vocab.EMOTIONS[i % 9] for i in range(len(images))]  # one per image
  got = predictor.explain(images, emotion=chosen)
  assert [p["emotion"] for p in got] == chosen


def test_unknown_emotion_is_refused_naming_the_nine(predictor, images):
  with pytest.raises(errors.InputError, match="'joy' is not one of the nine ArtEmis emotions:"
                     " amusement, awe, .*something else"):
    predictor.explain(images[:2], emotion=["fear", "joy"])
  with pytest.raises(errors.InputError, match="got 1 names for 2 images"):
    predictor.explain(images[:2], emotion=["fear"])


def test_first_step_distribution_equals_a_separate_pass(predictor, images):
  got = predictor.predict(images, return_attention=True)
  probs = np.asarray([p["probabilities"] for p in got])
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(probs, predictor.emotion_distribution(images), atol=1e-5)
  # The same when the emotion is forced: the distribution is read before the forced tokens.
  forced = predictor.explain(images, emotion="awe", return_attention=True)
  np.testing.assert_allclose([p["probabilities"] for p in forced], probs, atol=1e-5)


def test_attention_per_word_and_vad_per_token(predictor, images):
  plain = predictor.predict(images)
  got = predictor.predict(images, return_attention=True, return_vad=True)
  grid = predictor.config.data.image_size // predictor.model.config.vision.patch_size
  for p, q in zip(got, plain):
    assert {k: p[k] for k in q} == q  # the same text as the default loop
    generated = p["text"][len("the emotion is"):].split()
    # The explanation's words; every generated word when " because" never came.
    assert p["words"] == (p["explanation"].split() if "because" in generated else generated)
    assert p["attention"].shape == (len(p["words"]), grid, grid)
    np.testing.assert_allclose(p["attention"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert "".join(p["tokens"]).split() == p["words"] and p["vad"].shape == (len(p["tokens"]), 3)
  assert "attention" not in predictor.predict(images[:1], return_vad=True)[0]


class Tokens:
  """token_text of a toy vocabulary: ids 0..3 are ' the', ' sky', 'line', ','."""
  TEXT = [" the", " sky", "line", ","]

  def token_text(self, i):
    return self.TEXT[i]

  def decode(self, ids):
    return "".join(self.TEXT[i] for i in ids)


def test_a_words_map_is_the_mean_of_its_tokens_maps():
  because = 9
  tokens = np.asarray([7, because, 0, 1, 2, 3, vocab.EOS_ID])
  attention_NxP = np.random.default_rng(0).random((7, 4)).astype(np.float32)
  vad_Nx3 = np.arange(21, dtype=np.float32).reshape(7, 3)
  got = trace_lib.trace_entry(Tokens(), tokens, 6, attention_NxP, vad_Nx3, because)
  assert got["words"] == ["the", "skyline,"] and got["tokens"] == Tokens.TEXT
  np.testing.assert_allclose(got["attention"][0].ravel(), attention_NxP[2])
  np.testing.assert_allclose(got["attention"][1].ravel(), attention_NxP[3:6].mean(axis=0))
  np.testing.assert_array_equal(got["vad"], vad_Nx3[2:6])
  # Without " because" every generated token is explanation.
  plain = trace_lib.trace_entry(Tokens(), tokens[2:], 4, attention_NxP[2:], vad_Nx3[2:], because)
  assert plain["words"] == ["the", "skyline,"]
  np.testing.assert_array_equal(plain["vad"], vad_Nx3[2:6])


def test_decoding_choices_in_the_api(predictor, images):
  greedy = predictor.predict(images)
  assert predictor.with_decoding(decoding="beam", beam_width=1).predict(images) == greedy
  beam = predictor.with_decoding(decoding="beam", beam_width=3, length_penalty=0.6)
  assert all(p["text"].startswith("the emotion is") for p in beam.predict(images))
  sampled = predictor.with_decoding(decoding="top_p", top_p=1.0, temperature=2.0, seed=5)
  again = predictor.with_decoding(decoding="top_p", top_p=1.0, temperature=2.0, seed=5)
  assert sampled.predict(images) == again.predict(images)
  with pytest.raises(errors.ConfigError, match="decoding must be one of greedy, top_p, beam"):
    predictor.with_decoding(decoding="nucleus")
  with pytest.raises(errors.ConfigError, match="unknown decoding option"):
    predictor.with_decoding(beams=3)


def test_command_line_explains_the_given_emotion(tiny_run, images, tmp_path, tmp_path_factory):
  path = tmp_path / "painting.png"
  Image.fromarray(images[0]).save(path)
  args = ["--mode=predict", f"--workdir={tiny_run}", f"--images={path}", "--emotion=sadness"]
  result = subprocess.run(main_command(args), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=subprocess_env(compile_cache(tmp_path_factory)), check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  pred = json.loads(result.stdout.strip().splitlines()[-1])
  assert pred["image"] == str(path) and pred["text"].startswith("the emotion is sadness because")


def test_trace_words_follow_the_explanation_split():
  """With explanation_after='last_because' the trace starts after the last " because", where
  sentences.parse_generation starts the explanation."""
  because = 9
  tokens = np.asarray([7, because, 0, because, 1, 2, vocab.EOS_ID])
  first = trace_lib.explanation_positions(tokens, 6, because)
  last = trace_lib.explanation_positions(tokens, 6, because, "last_because")
  np.testing.assert_array_equal(first, [2, 3, 4, 5])
  np.testing.assert_array_equal(last, [4, 5])
