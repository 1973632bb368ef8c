"""Shared test fixtures (the plain helpers that tests call are in helpers.py; the autouse fixture
that starts the shared run early stays in test_train.py, where it must apply)."""

import jax
import jax.numpy as jnp
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


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A fixed training batch of the tiny demo data and the token VAD table."""
  from sevlm_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import sources  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import vad_table as vad_table_lib  # pylint: disable=import-outside-toplevel
  from helpers import demo_root, tiny_config  # pylint: disable=import-outside-toplevel
  root = demo_root(tmp_path_factory)
  config = tiny_config(root)
  tokenizer = tokenizer_lib.load_tokenizer()
  ready = sources.resolve_ready_dir(config, str(root))
  loader = pipeline.train_loader(ready, tokenizer, batch_size=4, max_len=config.data.max_len, seed=0,
                                 shard_index=0, shard_count=1)
  batch = next(iter(loader))
  batch = {k: batch[k] for k in ("image", "input_ids", "segment_ids", "token_mask", "labels")}
  vad_table = vad_table_lib.load_vad_table(config, tokenizer, str(tmp_path_factory.mktemp("vad")))
  return root, batch, jnp.asarray(vad_table)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The workdir of the shared tiny run (helpers.trained_run: trained once per session)."""
  from helpers import trained_run  # pylint: disable=import-outside-toplevel
  return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def trainable_vision(data, make_random_params):
  from helpers import Stepper  # pylint: disable=import-outside-toplevel
  return Stepper(data[0], make_random_params, **{"optim.train_vision": True})


@pytest.fixture(scope="module")
def frozen_no_vad(data, make_random_params):
  """Frozen vision tower and the no-VAD-embedding ablation, in one compiled step."""
  from helpers import Stepper  # pylint: disable=import-outside-toplevel
  return Stepper(data[0], make_random_params,
                 **{"optim.train_vision": False, "model.use_vad_embedding": False})


@pytest.fixture(scope="module")
def loader(tmp_path_factory):
  """A fresh training loader of the tiny demo data, and its first 8 batches."""
  from sevlm_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import sources  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from helpers import TINY, demo_root  # pylint: disable=import-outside-toplevel
  ready = sources.ensure_demo_dataset(demo_root(tmp_path_factory),
                                      num_images=TINY["data.demo_num_images"], image_size=32)
  tokenizer = tokenizer_lib.load_tokenizer()

  def make():
    return iter(pipeline.train_loader(ready, tokenizer, batch_size=4, max_len=24, seed=0,
                                      shard_index=0, shard_count=1))

  straight = make()
  return make, [next(straight) for _ in range(8)]
