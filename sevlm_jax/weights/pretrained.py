"""A run's starting parameters from the pretrained weights its config names (the `pretrained`
section): distilgpt2 and CLIP for training, or the authors' released SEVLM, which replaces
distilgpt2 and is evaluated and served as it is when the workdir holds no trained checkpoint.
"""

from typing import Any

from absl import logging
import jax
import ml_collections

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import errors
from sevlm_jax.errors import ConfigError
from sevlm_jax.models import config as model_config_lib
from sevlm_jax.models import sevlm as sevlm_lib
from sevlm_jax.weights import gpt2 as gpt2_map
from sevlm_jax.weights import io as weights_io
from sevlm_jax.weights import load as weights
from sevlm_jax.weights import sevlm as sevlm_weights


def check_config(config: ml_collections.ConfigDict) -> None:
  """The pretrained section's choices (no file is read)."""
  errors.check_choice("pretrained.new_token_init", config.pretrained.new_token_init,
                      gpt2_map.NEW_TOKEN_INITS)


def check_sources(config: ml_collections.ConfigDict) -> None:
  """Every pretrained source the config names can be found (a local path, or a hub name that is
  cached or downloadable): a ConfigError naming the field otherwise, before any long work."""
  released = config.pretrained.sevlm
  for field in ("gpt2", "clip"):
    source = config.pretrained[field]
    if source and not (field == "gpt2" and released):  # the released model replaces distilgpt2
      try:
        weights_io.resolve(source)
      except errors.CheckpointError as e:
        raise ConfigError(f"pretrained.{field}={source!r}: {e}") from None
  if released:
    try:
      sevlm_weights.locate(released)
    except errors.CheckpointError as e:
      raise ConfigError(f"pretrained.sevlm={released!r}: {e}") from None


def initial_params(config: ml_collections.ConfigDict, model_config: model_config_lib.ModelConfig
                   ) -> Any:
  """Random init from config.seed, then the pretrained weights the config names
  (pretrained.sevlm, the authors' released model, replaces pretrained.gpt2)."""
  params = sevlm_lib.init_params(model_config, jax.random.PRNGKey(config.seed))
  p = config.pretrained
  if p.gpt2 or p.clip or p.sevlm:
    params = weights.load_pretrained(params, model_config, gpt2=p.gpt2 or None,
                                     clip=p.clip or None, sevlm=p.sevlm or None, seed=config.seed,
                                     new_token_init=p.new_token_init)
    logging.info("loaded pretrained weights: gpt2=%s clip=%s sevlm=%s",
                 "" if p.sevlm else p.gpt2, p.clip, p.sevlm)
  return params


def evaluates_imported_weights(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """No trained checkpoint in the workdir, and the authors' released model is named: evaluation
  and prediction then run the imported weights."""
  return bool(config.pretrained.sevlm) and not ckpt_lib.has_checkpoint(workdir)
