"""Command-line entry: train, evaluate, predict or serve; what each mode composes.

  python -m sevlm_jax.main --config=configs/sevlm.py:demo --workdir=/tmp/sevlm_demo
  python -m sevlm_jax.main --config=configs/sevlm.py:demo --workdir=/tmp/sevlm_demo --mode=evaluate
  python -m sevlm_jax.main --workdir=/tmp/sevlm_demo --mode=predict --images=a.jpg,b.png
  python -m sevlm_jax.main --workdir=/tmp/sevlm_demo --mode=serve --port=8765
  python -m sevlm_jax.main --workdir=/tmp/sevlm_demo --mode=export --out=/tmp/sevlm_demo_model
  python -m sevlm_jax.main --mode=predict --config=configs/sevlm.py:official --images=a.jpg \
      --config.pretrained.sevlm=jing5566/SEVLM --config.data.lexicon=NRC-VAD-Lexicon.txt
"""

import json
import logging as logging_std
import os
import re
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from sevlm_jax import checkpoints
from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import parallel
from sevlm_jax import run as run_lib
from sevlm_jax.config import config_path
from sevlm_jax.config import migrate
from sevlm_jax.data import sources
from sevlm_jax.evaluation import artemis_judge
from sevlm_jax.evaluation import evaluate as eval_lib
from sevlm_jax.evaluation import report as report_lib
from sevlm_jax.inference import decode as decode_lib
from sevlm_jax.inference import export as export_lib
from sevlm_jax.inference import predictor as predictor_lib
from sevlm_jax.inference import publish as publish_lib
from sevlm_jax.inference import serve as serve_lib
from sevlm_jax.training import loop
from sevlm_jax.training import optim as optim_lib
from sevlm_jax.training import step as step_lib
from sevlm_jax.training import metrics_writer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sevlm.py:demo.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "serve", "export"],
                          "train (then evaluate), evaluate a run, predict for --images, serve "
                          "a local web page for trying the model, or export it to --out.")
_IMAGES = flags.DEFINE_list("images", [], "predict: image files to describe.")
_EMOTION = flags.DEFINE_string("emotion", None, "predict: explain this emotion (one of the nine "
                               "ArtEmis emotions) for every image instead of the model's choice.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", None, list(checkpoints.ALL_KINDS),
                                "evaluate/predict/serve/export: which checkpoint (default: the config's "
                                "eval.checkpoint; best_acc for predict, serve and export).")
_PORT = flags.DEFINE_integer("port", 8765, "serve: the port on 127.0.0.1 to listen on.")
_OUT = flags.DEFINE_string("out", None, "export: the model directory to write (created or replaced).")
_EXPORT_VAD_TABLE = flags.DEFINE_bool(
    "export_vad_table", True, "export: include the VAD table; False for a table from a lexicon "
    "that may not be redistributed (NRC-VAD): loading then needs the user's copy of it.")
_SPACE = flags.DEFINE_bool("space", False, "export: also write app.py and requirements.txt, a "
                           "Gradio app that runs as a Hugging Face Space (pip install "
                           "'sevlm_jax[space]'; try it with python OUT/app.py).")
_PUSH_TO_HUB = flags.DEFINE_string(
    "push_to_hub", None, "export: then upload the directory to this Hugging Face hub model "
    "repository (OWNER/NAME; created if missing), with the token of HF_TOKEN or `hf auth login`.")
_PRIVATE = flags.DEFINE_bool("private", False, "export with --push_to_hub: create the repository "
                             "private (an existing one keeps its visibility).")


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of Orbax and grain (every save logs a dozen lines); keeps warnings."""

  def filter(self, record):
    noisy = any(part in record.pathname
                for part in ("/orbax/", "/grain/", "/jax/_src/xla_bridge"))  # "no TPU backend"
    return record.levelno >= logging_std.WARNING or not noisy


# ----------------------------------------------------------------------------- the modes

def check_config(config: ml_collections.ConfigDict) -> None:
  """Every section's own check: those of the set-up's packages (run.check_config), then those
  of the floors above it."""
  run_lib.check_config(config)
  step_lib.check_config(config)
  optim_lib.check_config(config.optim)
  decode_lib.check_config(config.eval)
  artemis_judge.check_config(config.judge)  # judge.source, and ArtEmis's files before any training
  metrics_writer.parse_writers(config.train.writers)
  eval_lib.check_config(config)  # validation BLEU-4's tokenizer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir`, then evaluates its best checkpoint on config.eval.split."""
  mesh = loop.check_parallel(config)
  run = parallel.primary_first(lambda: run_lib.prepare_run(config, workdir), "prepare_run")
  writer = metrics_writer.open_for_run(config, workdir, enabled=jax.process_index() == 0)
  try:
    step, finished = loop.train(config, workdir, run, mesh, writer,
                                eval_lib.validator(run, config))
    if not finished:
      return {"step": step, "finished": False}
    results = evaluate(config, workdir, run, writer)  # its figures go through the same writers
  finally:
    writer.close()
  return results


def evaluate(config: ml_collections.ConfigDict, workdir: str, run: run_lib.Run | None = None,
             writer: metrics_writer.MetricsWriter | None = None) -> dict[str, Any]:
  """evaluate.evaluate_run on every process (process 0 first prepares the files they share), then
  the HTML report."""
  if run is None:
    run = parallel.primary_first(lambda: run_lib.prepare_run(config, workdir, write_config=False),
                                 "prepare_run")
  judge = parallel.primary_first(lambda: eval_lib.get_judge(run, workdir), "judge")
  results = eval_lib.evaluate_run(config, workdir, run=run, judge=judge, writer=writer)
  # The HTML report, from the files evaluate_run wrote.
  if jax.process_index() == 0 and config.eval.report:
    path = report_lib.write_report_from_files(workdir, config.eval.split, run.ready_dir,
                                              images_blanked=bool(config.data.blank_images))
    logging.info("report: %s", path)
  return results


def train_with_blind_baseline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the model and the same model with every image blanked, and compares them.

  The image-blind model can only learn the emotion prior and generic explanations, so the
  gap between the two is what the model learns from the pictures.
  """
  results = train_and_evaluate(config, workdir)
  if "ACC" not in results:  # interrupted: the comparison waits for a finished run
    return results
  blind = ml_collections.ConfigDict(config.to_dict())
  blind.data.blank_images = True
  blind.demo_blind_baseline = False
  blind.data.ready_dir = sources.default_ready_dir(config, workdir)  # reuse the prepared data
  blind_dir = os.path.join(workdir, "image_blind")
  io_utils.as_path(blind_dir).mkdir(parents=True, exist_ok=True)  # a local folder or gs://...
  _share_judge(workdir, blind_dir)
  blind_results = train_and_evaluate(blind, blind_dir)
  if "ACC" not in blind_results:
    return results
  rows = {}
  for name, res in (("model", results), ("image_blind", blind_results)):
    rows[name] = eval_lib.scalar_metrics(res)
    if res.get("EA_judge_heldout_accuracy") is not None:  # none with ArtEmis's judge
      rows[name]["EA_judge_heldout_accuracy"] = res["EA_judge_heldout_accuracy"]
  rows["gain"] = {k: rows["model"][k] - rows["image_blind"].get(k, 0.0) for k in rows["model"]
                  if k in rows["image_blind"]}
  io_utils.write_json_atomic(os.path.join(workdir, "comparison.json"), rows)
  keys = ["ACC", "EA", "Unique", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
  print(f"\n{'':14s}" + "".join(f"{k:>9s}" for k in keys))
  for name in ("model", "image_blind", "gain"):
    print(f"{name:14s}" + "".join(f"{rows[name].get(k, float('nan')):9.4f}" for k in keys))
  print(f"(EA read by {eval_lib.judge_name(results.get('EA_judge'))}; "
        f"written to {os.path.join(workdir, 'comparison.json')})")
  return rows


def _share_judge(src_workdir: str, dst_workdir: str) -> None:
  src, dst = os.path.join(src_workdir, "judge"), os.path.join(dst_workdir, "judge")
  if io_utils.as_path(src).is_dir() and not io_utils.as_path(dst).exists():
    io_utils.copy_tree(src, dst)


# ----------------------------------------------------------------------------- the command

def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value and not _runs_released(_MODE.value, _CONFIG.value, None):
    raise app.UsageError("--workdir is required (predict, serve and export of the authors' "
                         "released model need none: --config.pretrained.sevlm=DIR_OR_HUB)")
  _run_mode(_MODE.value, _CONFIG.value, _WORKDIR.value)


def _runs_released(mode: str, config: ml_collections.ConfigDict | None, workdir: str | None) -> bool:
  """predict, serve and export run the authors' released model (--config.pretrained.sevlm, with
  --config.data.lexicon) when --workdir holds no trained checkpoint, or is not given."""
  return (mode in ("predict", "serve", "export") and config is not None
          and bool(config.pretrained.sevlm)
          and not (workdir and checkpoints.has_checkpoint(workdir)))


def _run_mode(mode: str, config: ml_collections.ConfigDict | None, workdir: str) -> None:
  if mode == "export":
    if not _OUT.value:
      raise app.UsageError("--mode=export needs --out=DIR, the model directory to write")
    released = _runs_released(mode, config, workdir)
    out = export_lib.export_model(workdir, _OUT.value, checkpoint=_CHECKPOINT.value or "best_acc",
                                  include_vad_table=_EXPORT_VAD_TABLE.value, space=_SPACE.value,
                                  released_config=config if released else None)
    print(f"exported to {out}; load it with Predictor.from_pretrained({str(out)!r})")
    publish_lib.push_from_command_line(out, _PUSH_TO_HUB.value, _PRIVATE.value, workdir,
                                       lexicon=config.data.lexicon if released else None)
    return
  if mode in ("predict", "serve"):
    checkpoint = _CHECKPOINT.value or "best_acc"
    if mode == "predict" and not _IMAGES.value:
      raise app.UsageError("--mode=predict needs --images=path1,path2,...")
    batch_size = 1 if mode == "serve" else None
    if _runs_released(mode, config, workdir):
      predictor = predictor_lib.Predictor.from_released(config.pretrained.sevlm, config=config,
                                                        batch_size=batch_size)
      name = f"the authors' released SEVLM ({config.pretrained.sevlm})"
    else:
      predictor = predictor_lib.Predictor.from_workdir(workdir, checkpoint, batch_size=batch_size)
      name = f"{workdir} (checkpoint {checkpoint})"
    if mode == "serve":
      serve_lib.serve(predictor, port=_PORT.value, name=name)
      return
    _print_predictions(_IMAGES.value, predictor.predict_each(_IMAGES.value, emotion=_EMOTION.value))
    return
  if config is None:
    raise app.UsageError(f"--config is required for {mode}, e.g. --config=configs/sevlm.py:demo")
  config = migrate.migrate(config, source="--config")
  check_config(config)
  if _CHECKPOINT.value:
    config.eval.checkpoint = _CHECKPOINT.value
  if (mode == "evaluate" and not checkpoints.has_checkpoint(workdir)
      and not config.pretrained.sevlm):
    raise errors.CheckpointNotFoundError(
        f"no checkpoint in {io_utils.absolute(workdir)}: train first (--mode=train with the same "
        "--workdir), point --workdir at a trained run, or evaluate the authors' released model "
        "(--config.pretrained.sevlm=DIR)")
  parallel.maybe_initialize_distributed(config.parallel)  # before anything touches a device
  if mode == "train":
    if config.demo_blind_baseline:
      train_with_blind_baseline(config, workdir)
    else:
      train_and_evaluate(config, workdir)
  else:
    evaluate(config, workdir)


def _print_predictions(paths: list[str], preds: list[dict[str, Any]]) -> None:
  """A JSON line on stdout for each image read, an `error:` line on stderr for each image that
  was not (so stdout holds only results, each naming its image); exit status 2 if any failed."""
  failed = 0
  for path, pred in zip(paths, preds):
    if "error" in pred:
      print(f"error: {errors.one_line(pred['error'])}", file=sys.stderr)
      failed += 1
    else:
      print(json.dumps({"image": path, **pred}, ensure_ascii=False))
  if failed:
    sys.exit(2)


def _parse_flags(argv):
  """absl's parser, with one clear line instead of a traceback for a bad config or override."""
  try:
    # configs/<file> that is not in the current directory: the copy inside the package.
    parsed = flags.FLAGS(config_path.resolve_in_argv(argv))
    _ = _CONFIG.value  # the config file is loaded lazily: load it here, where errors are caught
    return parsed
  except flags.Error as e:  # config_flags appends the config file's traceback
    reason = str(e).strip().splitlines()[-1]
  except (AttributeError, KeyError) as e:  # --config.a.b=... names no field
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    message = str(e.args[0] if e.args else e)  # ml_collections nests escaped reprs in it
    field = re.search(r"[A-Za-z_]\w*", message)
    suggestion = re.search(r'Did you mean "([^"\\]+)', message)
    reason = (f"the config has no field '{field.group(0) if field else message}' (overrides: "
              f"{', '.join(bad)})" + (f"; did you mean '{suggestion.group(1)}'?" if suggestion else ""))
  except (OSError, errors.ConfigError) as e:  # a config file that is missing or cannot be loaded
    reason = str(e)
  errors.exit_with_error(reason)


if __name__ == "__main__":
  # What the user can fix (a UserError, an OSError, a usage error): one line, exit status 2.
  app.run(errors.one_line_errors(main), flags_parser=_parse_flags)
