"""The run config -> the network, and the shapes of its parameters."""

import ml_collections

from sevlm_jax.errors import ConfigError
from sevlm_jax.models import config as model_config_lib
from sevlm_jax.models import sevlm as sevlm_lib


def build_model(config: ml_collections.ConfigDict) -> sevlm_lib.SEVLM:
  """The run's network; data.blank_images (the image-blind control) makes its vision input grey,
  so training, the feature cache, evaluation and prediction all see what the model was
  trained on."""
  model = config.model.to_dict()
  model["blank_images"] = bool(config.data.blank_images)
  return sevlm_lib.SEVLM(model_config_lib.ModelConfig.from_dict(model))


def check_config(config: ml_collections.ConfigDict) -> None:
  """The model section against the data it reads."""
  if config.model.vision.image_size != config.data.image_size:
    raise ConfigError(f"model.vision.image_size={config.model.vision.image_size} differs from "
                      f"data.image_size={config.data.image_size}; set both to the same value")
