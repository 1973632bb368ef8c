"""The training loop: init or resume, step, validate, checkpoint, stop early, evaluate.

Restarting with the same workdir resumes from the latest readable checkpoint (train state and
data iterator), so the run continues with exactly the batches it would have seen.
SIGTERM and Ctrl-C save a checkpoint before the process exits.

The step runs over every device of every process (parallel.py): config.train.batch_size is
the global batch, each process loads its 1/P block of it, and the result does not depend on
how many devices or processes share the work (up to float rounding). Every process runs this
same loop; only process 0 writes metrics.
"""

import os
import signal
import time
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import io_utils
from sevlm_jax import parallel
from sevlm_jax.config import prepared
from sevlm_jax.data import features
from sevlm_jax.data import pipeline
from sevlm_jax.errors import ConfigError
from sevlm_jax.training import optim as optim_lib
from sevlm_jax.training import step as step_lib
from sevlm_jax.training.metrics_writer import MetricsWriter
from sevlm_jax.weights import pretrained


class _StopRequest:
  """Turns SIGTERM into a flag the loop polls, so the loop can checkpoint and exit cleanly.

  One process only. With several, JAX's preemption service takes SIGTERM (jax.distributed
  installs its handler, which this one would replace) and names one step at which every process
  stops: RunCheckpoints.reached_preemption. That check cannot serve one process: without
  jax.distributed there is no preemption service, and SIGTERM would end the process unsaved.
  """

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      del frame
      logging.warning("signal %d received: saving a checkpoint, then stopping", signum)
      self.requested = True
    if not self.enabled:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def total_train_steps(config: ml_collections.ConfigDict, ready_dir: str) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  # An epoch visits each pair image once in global batches (pipeline.train_loader), the partial
  # last one counted with train.drop_last False, as the public code's schedule counts it.
  steps_per_epoch = pipeline.steps_per_epoch(ready_dir, batch_size=config.train.batch_size,
                                             drop_remainder=config.train.drop_last)
  if steps_per_epoch == 0:
    num_pair_images = len(pipeline.training_images(ready_dir))
    raise ConfigError(
        f"train.batch_size={config.train.batch_size} is larger than the {num_pair_images} training "
        "images with at least two distinct emotions; lower --config.train.batch_size")
  return int(config.train.num_epochs * steps_per_epoch)


def validates_at(train: ml_collections.ConfigDict, step: int, total_steps: int) -> bool:
  """Every train.eval_every steps (counted over all epochs, partial batches included, as the
  public code's line `(epoch*num_batch+(step+1)) % eval_steps == 0`), and at the last step
  with train.validate_final_step (the public code does not)."""
  return step % train.eval_every == 0 or (train.validate_final_step and step == total_steps)


def check_batch_fits(config: ml_collections.ConfigDict, ready_dir: str, mesh) -> None:
  """ConfigError, before any compilation, unless a training batch fits the train split: an epoch
  is a whole number of batches of its images with two distinct emotions (pipeline.train_loader),
  each process reading an equal part of them. Without train.drop_last any batch fits (padded)."""
  images = len(pipeline.training_images(ready_dir))
  if not config.train.drop_last and images:
    return
  _, parts = parallel.process_part(mesh)
  devices = parallel.data_size(mesh)
  largest = (images // parts) * parts // devices * devices  # also a multiple of the devices
  if config.train.batch_size <= largest:
    return
  shared = f", read in {parts} equal parts by the processes" if parts > 1 else ""
  fits = (f"the largest batch that fits is {largest} (--config.train.batch_size={largest})"
          if largest else f"no batch split over {devices} devices fits; prepare more data")
  raise ConfigError(f"train.batch_size={config.train.batch_size} is larger than the train split "
                    f"of {ready_dir} allows: it has {images} images with at least two distinct "
                    f"emotions (the ones training uses){shared}; {fits}")


def _host_batch(batch: dict[str, np.ndarray],
                patch_cache: features.PatchCache | None = None) -> dict[str, np.ndarray]:
  """The fields the step reads; with a feature cache, cached patches replace the images."""
  # valid: the padding rows of a partial batch (train.drop_last False)
  keys = ("input_ids", "segment_ids", "token_mask", "labels", "valid")
  out = {k: batch[k] for k in keys if k in batch}
  if patch_cache is not None:
    out["patches"] = patch_cache[batch["image_index"]]
  else:
    out["image"] = batch["image"]
  return out


def patch_feature_cache(config: ml_collections.ConfigDict, run: prepared.Run, params, workdir: str
                        ) -> features.PatchCache | None:
  """The frozen tower's patches of the training split, cached (built on first use); or None.

  Used when train.feature_cache='auto', the tower is frozen (its output never changes) and a
  single process trains. The pipeline has no image augmentation, so one encoding per image
  is exact up to the bf16 storage.
  """
  mode = config.train.feature_cache
  if mode not in ("auto", "off"):
    raise ConfigError(f"train.feature_cache={mode!r}; choose 'auto' or 'off'")
  if mode == "off" or config.optim.train_vision:
    return None
  if jax.process_count() > 1:
    logging.info("feature cache off: %d processes (each would need the whole split)",
                 jax.process_count())
    return None
  model = run.model
  encode = jax.jit(lambda vision, images: model.apply(
      {"params": {"vision": vision}}, images, method=model.encode_image))

  def encode_stored(images):
    return encode(params["vision"], images)

  started = time.time()
  cache = features.load_or_build(
      os.path.join(workdir, "features"), run.ready_dir, "train",
      params["vision"], model.config.vision, model.config.image_norm,
      encode_stored, batch_size=config.eval.batch_size, blank_images=model.config.blank_images)
  logging.info("patch feature cache %s (%d images, %.1f s)", cache.path, len(cache),
               time.time() - started)
  return cache


def sharded_train_step(train_step, mesh, state_shardings, seed: int):
  """jit of train_step over the mesh: (state, global batch, vad_table) -> (state, metrics).

  The state keeps its shardings (replicated or fsdp), the batch is split over 'data', and
  metrics come back replicated. The step's random key is derived from the state's step
  counter, so a resumed run draws the same keys. The old state's buffers are donated.
  """
  def step_fn(state, batch, vad_table):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
    return train_step(state, batch, vad_table, rng)

  rep = parallel.replicated(mesh)
  return jax.jit(step_fn, in_shardings=(state_shardings, parallel.batch_sharding(mesh), rep),
                 out_shardings=(state_shardings, rep), donate_argnums=0)


def check_parallel(config: ml_collections.ConfigDict):
  """The mesh of config.parallel once the batch fits it; a ConfigError comes before any work."""
  mesh = parallel.make_mesh(config.parallel)
  parallel.check_batch_size("train.batch_size", config.train.batch_size, mesh)
  return mesh


Validator = Callable[[Any], dict[str, float]]  # params -> {"acc": ..., "bleu4": ...} on val


def train(config: ml_collections.ConfigDict, workdir: str, run: prepared.Run, mesh,
          writer: MetricsWriter, validate: Validator) -> tuple[int, bool]:
  """The training loop of a prepared run; returns (step reached, finished or stopped early).

  validate: scores parameters on the validation split (evaluation.evaluate.validator); every
  train.eval_every steps it picks the best checkpoints and decides early stopping.
  """
  model, tokenizer = run.model, run.tokenizer
  check_batch_fits(config, run.ready_dir, mesh)
  part, parts = parallel.process_part(mesh)
  loader = pipeline.train_loader(run.ready_dir, tokenizer,
                                 batch_size=config.train.batch_size // parts,
                                 max_len=config.data.max_len, seed=config.seed,
                                 worker_count=config.data.worker_count, shard_index=part,
                                 shard_count=parts, drop_remainder=config.train.drop_last,
                                 pair_anchor=config.train.pair_anchor)
  total_steps = total_train_steps(config, run.ready_dir)
  trainable, _ = optim_lib.split_params(run.abstract_params, config.optim.train_vision)
  tx = optim_lib.create_optimizer(config.optim, trainable, total_steps)
  abstract_state = jax.eval_shape(
      lambda p: step_lib.init_train_state(p, tx, config.optim.train_vision), run.abstract_params)
  state_shardings = parallel.tree_shardings(abstract_state, mesh, config.parallel)

  ckpts = ckpt_lib.RunCheckpoints(workdir)
  data_iter = iter(loader)
  state, history = _resume_or_start(config, run, ckpts, tx, abstract_state, state_shardings,
                                    data_iter)

  patch_cache = None  # a finished run started again needs no cache
  if int(state.step) < total_steps:
    patch_cache = patch_feature_cache(config, run, state.params, workdir)
  train_step = sharded_train_step(step_lib.make_train_step(model, config, tx, run.output_ids),
                                  mesh, state_shardings, config.seed)
  vad_table = parallel.put(run.vad_table, parallel.replicated(mesh))
  multi_process = jax.process_count() > 1
  step = int(state.step)
  t_start, step_start = time.time(), step
  try:
    with _StopRequest(enabled=not multi_process) as stop:
      stopping = False  # the stop all processes agreed on
      while step < total_steps and not stopping:
        batch = _host_batch(next(data_iter), patch_cache)
        state, metrics = train_step(state, parallel.shard_host_batch(batch, mesh), vad_table)
        step += 1
        # A signal may reach the processes at different steps; JAX's preemption service makes
        # them stop at the same one (a local check at every step, no collective).
        stopping = ckpts.reached_preemption(step) if multi_process else stop.requested
        if step % config.train.log_every == 0 or step == total_steps:
          rate = (step - step_start) / max(time.time() - t_start, 1e-9)
          _log_train_metrics(writer, metrics, step, total_steps, rate)
        if validates_at(config.train, step, total_steps):
          stop_early = _validate(config, validate, state, step, history, ckpts, writer)
          if stop_early:
            logging.info("no improvement in %d evaluations: stopping early at step %d",
                         config.train.patience, step)
            break
        if step % config.train.checkpoint_every == 0:
          ckpts.save_latest(step, state, data_iter, history)
    if ckpts.latest_step() != step:  # a finished run started again has nothing new to save
      ckpts.save_latest(step, state, data_iter, history)
  except KeyboardInterrupt:
    logging.warning("interrupted: saving a checkpoint at step %d", step)
    ckpts.save_latest(step, state, data_iter, history)
    raise
  finally:
    ckpts.close()  # waits for the asynchronous saves in flight
  if step < total_steps and not history.get("stopped_early"):
    logging.info("stopped at step %d of %d; run again with the same workdir to resume", step,
                 total_steps)
    return step, False
  return step, True


def _resume_or_start(config, run: prepared.Run, ckpts, tx, abstract_state, state_shardings,
                     data_iter) -> tuple[Any, dict[str, Any]]:
  """(train state, history): the latest checkpoint's, the data iterator set to its position, or
  a new state from the pretrained weights the config names."""
  if ckpts.latest_step() is not None:
    state, history = ckpts.restore_latest(
        parallel.with_shardings(abstract_state, state_shardings), data_iter)
    logging.info("resumed from %s at step %d", ckpts.workdir, int(state.step))
    return state, history
  state = step_lib.init_train_state(pretrained.initial_params(config, run.model.config), tx,
                                    config.optim.train_vision)
  return parallel.put(state, state_shardings), {"evals": 0, "evals_without_improvement": 0}


def _log_train_metrics(writer: MetricsWriter, metrics, step: int, total_steps: int,
                       rate: float) -> None:
  metrics = {k: float(v) for k, v in jax.tree.map(parallel.to_host, metrics).items()}
  metrics["steps_per_s"] = rate
  writer.write_scalars(step, "train", metrics)
  eta = (total_steps - step) / max(rate, 1e-9)
  logging.info("step %d/%d loss %.4f (%.2f steps/s, ETA %s)", step, total_steps,
               metrics["loss"], rate, io_utils.format_duration(eta))


def _validate(config, validate: Validator, state, step, history, ckpts, writer) -> bool:
  """Validation ACC and BLEU-4; keeps the best checkpoints; returns True to stop early."""
  val = validate(state.params)
  writer.write_scalars(step, "val", val)
  logging.info("step %d validation: acc %.4f bleu4 %.4f", step, val["acc"], val["bleu4"])
  history["evals"] += 1
  improved = ckpts.save_best(step, state.params, val)  # Orbax keeps the better of each kind
  for name, kind in (("acc", "best_acc"), ("bleu4", "best_bleu")):
    if kind in improved:
      history[f"best_{name}"] = val[name]
      history[f"best_{name}_step"] = step
  history["evals_without_improvement"] = 0 if improved else history["evals_without_improvement"] + 1
  stop = 0 < config.train.patience <= history["evals_without_improvement"]
  history["stopped_early"] = bool(stop)
  return stop
