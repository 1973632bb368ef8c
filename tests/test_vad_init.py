"""model.vad.init: the VAD encoder's initial weights, Flax's defaults or the public module's."""

import dataclasses

import jax
import numpy as np
import pytest

from sevlm_jax.models.config import ModelConfig, model_config_dict
from sevlm_jax.models.sevlm import init_params

DENSE = {"query": 3, "key": 3, "value": 3, "fc1": 3, "fc2": 128}  # layer -> fan_in


def _config(init: str) -> ModelConfig:
  config = ModelConfig.from_dict(model_config_dict("tiny"))
  config = dataclasses.replace(config, vad=dataclasses.replace(config.vad, init=init))
  assert config.vad.layers == 3 and config.vad.mlp_dim == 128  # the paper's encoder
  return config


def _vad_params(init: str) -> dict:
  params = jax.jit(lambda r: init_params(_config(init), r))(jax.random.PRNGKey(0))
  return jax.tree.map(np.asarray, params["vad_encoder"])


@pytest.fixture(scope="module")
def public():
  return _vad_params("public")


@pytest.fixture(scope="module")
def flax_default():
  return _vad_params("flax")


def test_public_init_is_torch_linears_uniform_bound(public):
  for layer, fan_in in DENSE.items():
    bound = fan_in ** -0.5
    for name in ("kernel", "bias"):
      w = public["layers_0"][layer][name]
      assert np.abs(w).max() <= bound, (layer, name)
      assert np.abs(w).max() > 0.8 * bound, (layer, name)  # the whole range is used
  # U(-b, b) has std b / sqrt(3): the two 384-weight matrices.
  for layer in ("fc1", "fc2"):
    w = public["layers_0"][layer]["kernel"]
    assert w.size == 384
    np.testing.assert_allclose(w.std(), 1 / np.sqrt(3 * DENSE[layer]), rtol=0.1)
    assert abs(w.mean()) < 0.2 * w.std()


def test_public_layers_start_as_copies_of_the_first(public):
  for k in ("layers_1", "layers_2"):
    jax.tree.map(np.testing.assert_array_equal, public[k], public["layers_0"])


def test_the_copies_can_be_donated_by_a_train_step():
  """The layers are equal, not one buffer: a step that donates its state takes them."""
  vad = init_params(_config("public"), jax.random.PRNGKey(0))["vad_encoder"]  # eager, as a run
  step = jax.jit(lambda p: jax.tree.map(lambda x: x + 1, p), donate_argnums=0)
  stepped = step(vad)
  np.testing.assert_array_equal(stepped["layers_2"]["fc1"]["bias"],
                                stepped["layers_0"]["fc1"]["bias"])


def test_positions_and_layer_norms_start_alike_in_both(public, flax_default):
  np.testing.assert_array_equal(public["position_embedding"], flax_default["position_embedding"])
  for norm in (public["norm"], public["layers_0"]["norm1"], public["layers_0"]["norm2"]):
    np.testing.assert_array_equal(norm["scale"], 1.0)
    np.testing.assert_array_equal(norm["bias"], 0.0)


def test_the_default_is_flax_lecun_normal_with_zero_biases(flax_default):
  assert ModelConfig().vad.init == "flax"
  for layer, fan_in in DENSE.items():
    np.testing.assert_array_equal(flax_default["layers_0"][layer]["bias"], 0.0)
  # lecun_normal: a truncated normal of std 1/sqrt(fan_in), so beyond the uniform bound.
  fc1 = flax_default["layers_0"]["fc1"]["kernel"]
  assert np.abs(fc1).max() > 1 / np.sqrt(3)
  np.testing.assert_allclose(fc1.std(), 1 / np.sqrt(3), rtol=0.1)
  assert not np.array_equal(flax_default["layers_0"]["fc1"]["kernel"],
                            flax_default["layers_1"]["fc1"]["kernel"])


def test_an_unknown_init_is_refused():
  with pytest.raises(ValueError, match="model.vad.init='torch'; expected one of"):
    ModelConfig.from_dict(dict(model_config_dict("tiny").to_dict(), vad={"init": "torch"}))
