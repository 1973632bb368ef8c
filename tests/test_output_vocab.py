"""The restricted output vocabulary: logits over a subset of tokens, labels and generation mapped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sevlm_jax import vocab
from sevlm_jax.inference.decode import generate
from sevlm_jax.models import SEVLM, ModelConfig, model_config_dict
from sevlm_jax.training.step import restricted_labels

PROMPT = [vocab.BOS_ID, 262, 9942, 318]  # "<bos> the emotion is"


@pytest.fixture(scope="module")
def setup(make_random_params):
  config = ModelConfig.from_dict(model_config_dict("tiny"))
  params = make_random_params(config, seed=0, std=0.3)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  vad_table = rng.uniform(-1, 1, (config.decoder.vocab_size, 3)).astype(np.float32)
  subset = np.unique(np.concatenate([rng.integers(0, vocab.GPT2_VOCAB_SIZE, 40), PROMPT,
                                     [vocab.EOS_ID]])).astype(np.int32)
  return config, params, images, vad_table, subset


def test_restricted_labels_maps_ids_to_positions():
  output_ids = jnp.asarray([5, 9, 100], jnp.int32)
  labels = jnp.asarray([[-1, 9, 5, 100, 7]], jnp.int32)  # 7 is outside the subset
  np.testing.assert_array_equal(restricted_labels(labels, output_ids, 200), [[-1, 1, 0, 2, -1]])


def test_restricted_logits_are_the_full_logits_at_those_columns(setup):
  config, params, images, vad_table, subset = setup
  model = SEVLM(config)
  with jax.default_matmul_precision("highest"):
    patches = model.apply({"params": params}, images, method=SEVLM.encode_image)
    ids = np.tile(np.asarray(PROMPT + [783, 262], np.int32), (2, 1))
    segs = np.full(ids.shape, config.emotion_segment_id, np.int32)
    mask = np.ones_like(ids)
    full = model.apply({"params": params}, patches, ids, segs, vad_table[ids], mask)["logits"]
    part = model.apply({"params": params}, patches, ids, segs, vad_table[ids], mask,
                       output_ids=jnp.asarray(subset))["logits"]
  assert part.shape == (2, ids.shape[1], len(subset))
  np.testing.assert_allclose(part, np.asarray(full)[..., subset], rtol=1e-5, atol=1e-6)


def test_generation_with_a_subset_emits_only_its_tokens_and_agrees_with_full_argmax(setup):
  config, params, images, vad_table, subset = setup
  model = SEVLM(config)
  kwargs = dict(max_new_tokens=6, because_id=783, eos_id=vocab.EOS_ID, pad_id=vocab.PAD_ID)
  with jax.default_matmul_precision("highest"):
    tokens, lengths = generate(model, params, images, vad_table, PROMPT, output_ids=subset, **kwargs)
    tokens_all, _ = generate(model, params, images, vad_table, PROMPT,
                             output_ids=np.arange(config.decoder.vocab_size), **kwargs)
    tokens_none, _ = generate(model, params, images, vad_table, PROMPT, **kwargs)
  tokens = np.asarray(tokens)
  for row, n in zip(tokens, np.asarray(lengths)):
    assert set(row[:n].tolist()) <= set(subset.tolist())
  # The whole vocabulary as the "subset" is the unrestricted model.
  np.testing.assert_array_equal(tokens_all, tokens_none)
