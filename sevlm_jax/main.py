"""Command-line entry: train, evaluate, predict or serve.

  python -m sevlm_jax.main --config=configs/sevlm.py:demo --workdir=/tmp/sevlm_demo
  python -m sevlm_jax.main --config=configs/sevlm.py:demo --workdir=/tmp/sevlm_demo --mode=evaluate
  python -m sevlm_jax.main --workdir=/tmp/sevlm_demo --mode=predict --images=a.jpg,b.png
  python -m sevlm_jax.main --workdir=/tmp/sevlm_demo --mode=serve --port=8765
"""

import json
import logging as logging_std
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from sevlm_jax import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sevlm.py:demo.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "serve"],
                          "train (then evaluate), evaluate a run, predict for --images, or serve "
                          "a local web page for trying the model.")
_IMAGES = flags.DEFINE_list("images", [], "predict: image files to describe.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "evaluate/predict/serve: best_acc, best_bleu or latest (default: config's).")
_PORT = flags.DEFINE_integer("port", 8765, "serve: the port on 127.0.0.1 to listen on.")


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of Orbax and grain (every save logs a dozen lines); keeps warnings."""

  def filter(self, record):
    noisy = any(part in record.pathname for part in ("/orbax/", "/grain/"))
    return record.levelno >= logging_std.WARNING or not noisy


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  # Imported here so that --help stays fast.
  from sevlm_jax import parallel
  from sevlm_jax.inference import predictor as predictor_lib
  from sevlm_jax.training import loop as train

  config = _CONFIG.value
  try:
    if _MODE.value == "predict":
      if not _IMAGES.value:
        raise app.UsageError("--mode=predict needs --images=path1,path2,...")
      predictor = predictor_lib.Predictor.from_workdir(_WORKDIR.value, _CHECKPOINT.value or "best_acc")
      for path, pred in zip(_IMAGES.value, predictor.predict(_IMAGES.value)):
        print(json.dumps({"image": path, **pred}, ensure_ascii=False))
      return
    if _MODE.value == "serve":
      from sevlm_jax.inference import serve
      serve.serve(_WORKDIR.value, port=_PORT.value, checkpoint=_CHECKPOINT.value or "best_acc")
      return
    if config is None:
      raise app.UsageError("--config is required for train and evaluate, e.g. --config=configs/sevlm.py:demo")
    if _CHECKPOINT.value:
      config.eval.checkpoint = _CHECKPOINT.value
    parallel.maybe_initialize_distributed(config.parallel)  # before anything touches a device
    if _MODE.value == "train":
      if config.demo_blind_baseline:
        train.train_with_blind_baseline(config, _WORKDIR.value)
      else:
        train.train_and_evaluate(config, _WORKDIR.value)
    else:
      train.evaluate(config, _WORKDIR.value)
  except errors.UserError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl's parser, with one clear line instead of a traceback for a bad config or override."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # config_flags appends the config file's traceback
    reason = str(e).strip().splitlines()[-1]
  except (AttributeError, KeyError) as e:  # --config.a.b=... names no field
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    field = str(e.args[0] if e.args else e).strip("'\"")
    reason = f"the config has no field '{field}' (overrides: {', '.join(bad)})"
  print(f"error: {reason}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
