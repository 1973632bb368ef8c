"""Shared test fixtures."""

import jax
import numpy as np
import pytest


def random_params(config, seed: int = 0, std: float = 0.02):
  """SEVLM parameters drawn with numpy from init_params' shapes: no XLA compile, fast on CPU."""
  from sevlm_jax.models import init_params  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = path[-1].key
    if name == "scale":
      return (1.0 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    return (std * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="session")
def make_random_params():
  """Function (config, seed=0, std=0.02) -> parameter pytree of numpy arrays."""
  return random_params


@pytest.fixture(scope="session")
def tiny_decoding(make_random_params):
  """(config, params, images, vad_table) for decoding tests: the tiny model with weights larger
  than GPT-2's init (std 0.3, so that greedy outputs vary with the image), three random
  images and a random VAD table."""
  from sevlm_jax.models import ModelConfig, model_config_dict  # pylint: disable=import-outside-toplevel
  config = ModelConfig.from_dict(model_config_dict("tiny"))
  params = make_random_params(config, seed=0, std=0.3)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  vad_table = rng.uniform(-1, 1, (config.decoder.vocab_size, 3)).astype(np.float32)
  return config, params, images, vad_table
