"""Orbax checkpoints of a run: the latest train state with its data iterator, and the best models.

Layout under the workdir:
  checkpoints/latest/<step>/{state,data,meta}          train state + grain iterator state, to resume
  checkpoints/best_acc/<step>/{params,meta,metrics}    parameters with the best validation accuracy
  checkpoints/best_bleu/<step>/{params,meta,metrics}   parameters with the best validation BLEU-4
  checkpoints/unreadable/<kind>_<step>                 steps a resume could not read, set aside

Writing: Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted or failed save never looks like a checkpoint (the leftovers are deleted when training
starts again). Saves are asynchronous: training goes on while a step is written, and close() waits
for it, so a save requested on SIGTERM is on disk before the process exits. Every validation offers
its parameters to both best checkpoints and Orbax keeps the better (best_fn). A save that fails
(a full disk, a read-only directory) is one UserError naming the directory and the cause.

Reading: the newest readable step wins. A step that cannot be read (a truncated file, an empty
data-iterator file) is named in a warning with the step used instead; when no step can be read,
one CheckpointNotFoundError says so.

Several processes: every process calls every save and restore. Orbax writes each array's shards
from the processes that hold them and the JSON meta from process 0; grain writes one iterator
state per process (data/process_<i>-of-<n>.json), so a run resumes with the same number of
processes. Each process reads on its own (a manager of that process alone, with no barrier a
failed read could leave the others waiting in), then all agree on the step they use.
The workdir must be on storage that every host sees (a shared file system or a bucket path).
"""

import contextlib
import functools
import json
import logging as logging_std
import os
import re
import sys
import time
from typing import Any, Callable, Iterable, Iterator

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import parallel
from sevlm_jax.errors import CheckpointNotFoundError, UserError

BEST_KINDS = ("best_acc", "best_bleu")
ALL_KINDS = ("latest",) + BEST_KINDS
BEST_METRIC = {"best_acc": "acc", "best_bleu": "bleu4"}  # the validation score each kind ranks by
LATEST_TO_KEEP = 2
UNREADABLE = "unreadable"


# ----------------------------------------------------------------------------- one line per failure

def cause(e: BaseException) -> str:
  """What went wrong, in one short line: the operating system's words when there are some."""
  text = str(e).strip()
  os_error = re.search(r"os_error_code='?(\d+)", text)  # tensorstore wraps an OSError's errno
  if os_error:
    return os.strerror(int(os_error.group(1)))
  if isinstance(e, OSError) and e.strerror:
    return e.strerror + (f": {e.filename}" if e.filename else "")
  first = text.splitlines()[0] if text else ""
  first = re.sub(r"\s*\[source locations=.*", "", first)  # tensorstore's, no help to a user
  first = re.sub(r' in OCDBT database at local file "[^"]*"', "", first)  # the caller names it
  line = f"{type(e).__name__}: {first}" if first else type(e).__name__
  return line if len(line) <= 240 else line[:237] + "..."


class _OrbaxErrorsFilter(logging_std.Filter):
  """Drops Orbax's own error records, each with a whole traceback: every failure they describe
  also reaches this module as an exception, which it reports as one line."""

  def filter(self, record):
    if record.levelno < logging_std.ERROR:
      return True
    if "/orbax/checkpoint/" in record.pathname:
      return False
    # asyncio's "exception was never retrieved" for a write Orbax abandoned after the first failed.
    return not (record.name == "asyncio" and _raised_in_orbax(record.exc_info))


def _raised_in_orbax(exc_info) -> bool:
  tb = exc_info[2] if exc_info else None
  while tb is not None:
    if "/orbax/checkpoint/" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


def _is_abandoned_write(unraisable) -> bool:
  """After one write fails, Orbax closes its event loop and leaves the step's other writes behind;
  as they finish they report 'Event loop is closed' (and, at exit, their coroutines' clean-up
  errors) through sys.unraisablehook: hundreds of lines repeating the failure already reported."""
  exc, obj = unraisable.exc_value, unraisable.object
  code = getattr(obj, "cr_code", None)
  return ((isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc))
          or (code is not None and "/orbax/checkpoint/" in code.co_filename))


@functools.cache
def quiet_orbax() -> None:
  """Installs (once) the filters that keep a failed save or restore to the one line we report."""
  for logger in ("absl", "asyncio"):
    logging_std.getLogger(logger).addFilter(_OrbaxErrorsFilter())
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_abandoned_write(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook


@contextlib.contextmanager
def saving(directory, what: str = "a checkpoint") -> Iterator[None]:
  """Turns any failure of a save (or of the asynchronous write it waits for) into one UserError."""
  quiet_orbax()
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # Orbax, tensorstore and the OS raise many types; all mean the same here
    raise UserError(f"cannot save {what} in {directory}: {cause(e)}; free space (or fix the "
                    "permissions) there and run the same command again") from e


def _attempt(fn: Callable[[], Any]) -> tuple[Any, str | None]:
  """(fn(), None), or (None, why) when fn raised here or on any other process: every process
  then takes the same next step, whichever of them failed to read."""
  try:
    value, why = fn(), None
  except Exception as e:  # pylint: disable=broad-except  # unreadable files raise many types
    value, why = None, cause(e)
  if parallel.any_process(why is not None):
    return None, why or "unreadable on another process"
  return value, None


# ----------------------------------------------------------------------------- managers

def _root(workdir: str) -> str:
  return os.path.join(io_utils.absolute(workdir), "checkpoints")


def _grain_checkpoint():
  """grain's checkpoint classes, imported only by training's "latest" checkpoints: reading
  parameters (prediction) needs no input pipeline."""
  return errors.optional_import("grain.checkpoint", "training's checkpoint of its input pipeline")


def _item_handlers(kind: str, processes=None) -> dict[str, Any]:
  processes = processes or ocp.options.MultiprocessingOptions()
  arrays = ocp.StandardCheckpointHandler(multiprocessing_options=processes)
  meta = ocp.JsonCheckpointHandler(multiprocessing_options=processes)
  if kind == "latest":
    return {"state": arrays, "data": _grain_checkpoint().CheckpointHandler(), "meta": meta}
  return {"params": arrays, "meta": meta}


def _rank_by(metric: str) -> Callable[[dict], tuple]:
  """Orbax's best_fn: the higher score, and of two equal scores the earlier step (a tie is no
  improvement, so it does not reset early stopping's patience)."""
  return lambda metrics: (metrics[metric], -metrics["step"])


def _best_options(kind: str) -> dict[str, Any]:
  return dict(best_fn=_rank_by(BEST_METRIC[kind]), best_mode="max")


def _writer(workdir: str, kind: str) -> ocp.CheckpointManager:
  """The manager a training run saves `kind` with."""
  quiet_orbax()
  # Barrier names of its own: the three managers' asynchronous saves of one step would otherwise
  # meet in the same barrier ("async_commit_complete.<step>") with several processes.
  processes = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind)
  options = dict(create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True,
                 multiprocessing_options=processes)
  if kind == "latest":
    options.update(max_to_keep=LATEST_TO_KEEP)
  else:
    options.update(max_to_keep=1, keep_checkpoints_without_metrics=False, **_best_options(kind))
  return ocp.CheckpointManager(os.path.join(_root(workdir), kind),
                               options=ocp.CheckpointManagerOptions(**options),
                               item_handlers=_item_handlers(kind, processes))


def _reader(workdir: str, kind: str) -> ocp.CheckpointManager:
  """A manager for reading, of this process alone: its restores hold no barrier with the other
  processes. Nothing here saves or deletes with it, and it cleans nothing up, so it may read a
  run that is still training. (Orbax's read_only option would warn at every use.)"""
  quiet_orbax()
  me = jax.process_index()
  alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  options = ocp.CheckpointManagerOptions(
      create=False, enable_async_checkpointing=False, multiprocessing_options=alone,
      **(_best_options(kind) if kind in BEST_KINDS else {}))
  return ocp.CheckpointManager(os.path.join(_root(workdir), kind), options=options,
                               item_handlers=_item_handlers(kind, alone))


def _preferred_steps(manager: ocp.CheckpointManager) -> list[int]:
  """The steps to try, best first: Orbax's best step (the latest for `latest`, or for best
  checkpoints saved without metrics), then the others, newest first."""
  best = manager.best_step()
  others = [s for s in reversed(manager.all_steps()) if s != best]
  return ([best] if best is not None else []) + others


def _set_aside(workdir: str, kind: str, step: int | None = None) -> str:
  """Moves an unreadable step (or a kind's whole directory) to checkpoints/unreadable/, where
  nothing reads it but a person can still look; process 0 moves it while the others wait."""
  source = os.path.join(_root(workdir), kind, *([str(step)] if step is not None else []))
  name = kind if step is None else f"{kind}_{step}"
  target = os.path.join(_root(workdir), UNREADABLE, name)

  def move():
    if io_utils.as_path(source).exists():
      io_utils.as_path(target).parent.mkdir(parents=True, exist_ok=True)
      free = target if not io_utils.as_path(target).exists() else f"{target}.{int(time.time())}"
      if io_utils.is_local(source):
        os.replace(source, free)
      else:  # an object store has no rename: fsspec copies the objects, then deletes them
        io_utils.as_path(source).rename(free)

  parallel.primary_first(move, f"set_aside:{name}")
  return os.path.dirname(target)


def _logged_validations(workdir: str) -> dict[int, dict[str, float]]:
  """step -> the scores of its last validation in <workdir>/metrics.jsonl (the same scores the
  best checkpoints were offered; a line cut by a kill is skipped)."""
  scores = {}
  try:
    with io_utils.as_path(workdir, "metrics.jsonl").open(encoding="utf-8") as f:
      lines = f.readlines()
  except OSError:
    return scores
  for line in lines:
    try:
      entry = json.loads(line)
    except ValueError:
      continue
    if isinstance(entry, dict) and entry.get("split") == "val" and isinstance(entry.get("step"), int):
      scores[entry["step"]] = {k: v for k, v in entry.items() if k not in ("step", "split", "time")}
  return scores


def _repair_best_metrics(workdir: str, kind: str) -> list[int]:
  """Rewrites each step's metrics file of a best checkpoint that cannot be read (Orbax ranks the
  steps by it; without it the kind would start again, and a worse validation become "best") from
  that step's validation in metrics.jsonl. Returns the steps rewritten."""
  directory = os.path.join(_root(workdir), kind)
  if not io_utils.as_path(directory).is_dir():
    return []
  logged, repaired = None, []
  for name in sorted(p.name for p in io_utils.as_path(directory).iterdir()):
    path = os.path.join(directory, name, "metrics", "metrics")
    if not name.isdigit() or not io_utils.as_path(path).parent.is_dir():
      continue
    try:
      with io_utils.as_path(path).open(encoding="utf-8") as f:
        readable = isinstance(json.load(f), dict)
    except (OSError, ValueError):
      readable = False
    if readable:
      continue
    logged = _logged_validations(workdir) if logged is None else logged
    if BEST_METRIC[kind] in logged.get(int(name), {}):
      io_utils.write_json_atomic(path, {"step": int(name), **logged[int(name)]})
      repaired.append(int(name))
  return repaired


# ----------------------------------------------------------------------------- a training run

class RunCheckpoints:
  """The checkpoints of one training run."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    with saving(_root(workdir)):
      self.latest = _writer(workdir, "latest")
    self.best = {kind: self._open_best(kind) for kind in BEST_KINDS}

  def _open_best(self, kind: str) -> ocp.CheckpointManager:
    """The best checkpoint's manager; one whose steps Orbax cannot list (e.g. a truncated metrics
    file) is set aside, and the kind starts again from the next validation."""
    opened, why = _attempt(lambda: _writer(self.workdir, kind))
    if why is None:
      return opened
    directory = os.path.join(_root(self.workdir), kind)
    repaired = parallel.primary_first(lambda: _repair_best_metrics(self.workdir, kind),
                                      f"repair_metrics:{kind}")
    if repaired:
      opened, still = _attempt(lambda: _writer(self.workdir, kind))
      if still is None:
        logging.warning("%s: the metrics file of step %s was unreadable (%s); rewritten from the "
                        "step's validation in metrics.jsonl", directory,
                        ", ".join(map(str, repaired)), why)
        return opened
    with saving(_root(self.workdir)):  # e.g. a directory that cannot be written
      if io_utils.as_path(directory).is_dir():
        where = _set_aside(self.workdir, kind)
        logging.warning("%s is unreadable (%s); moved to %s, the next validation starts it again",
                        directory, why, where)
      return _writer(self.workdir, kind)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """JAX's preemption service (several processes): has every process reached the step at which
    they all stop after a SIGTERM to any of them? Call it at every step."""
    return self.latest.reached_preemption(step)

  def save_latest(self, step: int, state: Any, data_iterator, meta: dict) -> None:
    """Starts saving the train state at `step`; a step already on disk holds this same state and
    is kept. The data iterator's position is taken now, the arrays are copied to the host now."""
    if step in self.latest.all_steps():
      return
    with saving(self.latest.directory):
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=_grain_checkpoint().CheckpointSave(data_iterator),
          meta=ocp.args.JsonSave(dict(meta))), force=True)  # a copy: the loop changes `meta`

  def restore_latest(self, abstract_state: Any, data_iterator) -> tuple[Any, dict]:
    """Restores state (into the given abstract shape) and the iterator in place: (state, meta).

    ShapeDtypeStructs that carry a sharding are restored straight into it (each process reads
    only its shards), whatever topology the checkpoint was saved from. Newer steps that cannot
    be read are set aside with a warning; none readable is a CheckpointNotFoundError.
    """
    reader = _reader(self.workdir, "latest")

    def read(step):
      restored = reader.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      # The iterator last: grain sets its position in place, and a step whose state cannot be
      # read must leave it untouched (a failed read of its own file happens before any change).
      reader.restore(step, args=ocp.args.Composite(
          data=_grain_checkpoint().CheckpointRestore(data_iterator)))
      return restored["state"], restored["meta"]

    unreadable = []  # (step, why)
    try:
      for step in _preferred_steps(reader):
        restored, why = _attempt(functools.partial(read, step))
        if why is None:
          break
        unreadable.append((step, why))
      else:
        raise CheckpointNotFoundError(
            f"no readable checkpoint in {reader.directory}: {_listed(unreadable, 'step ')}; move "
            "that directory away to start the run afresh (or use the config it was trained with)")
    finally:
      reader.close()
    if unreadable:
      for bad, _ in unreadable:
        where = _set_aside(self.workdir, "latest", bad)
      self.latest.reload()
      logging.warning("unreadable checkpoint in %s: %s; resuming from step %d instead (the "
                      "unreadable steps are now in %s)", reader.directory,
                      _listed(unreadable, "step "), step, where)
    return restored

  def save_best(self, step: int, params: Any, scores: dict[str, float]) -> list[str]:
    """Offers the parameters validated at `step` to each best checkpoint: Orbax keeps, per kind,
    the step with the highest score. Returns the kinds whose best is now `step`."""
    improved = []
    for kind, manager in self.best.items():
      record = {"step": step, **scores}
      with saving(manager.directory):
        if step in manager.all_steps():  # validated again after a resume: replaced
          manager.delete(step)
        manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(record)),
                     metrics=record, force=True)
      if manager.best_step() == step:
        improved.append(kind)
    return improved

  def close(self) -> None:
    """Waits for the saves in flight and closes every manager; then raises the first failed save
    as a UserError."""
    failed = []
    for manager in (self.latest, *self.best.values()):
      try:
        with saving(manager.directory):
          manager.close()
      except UserError as e:
        failed.append(e)
    if failed:
      raise failed[0]


def _listed(unreadable: list[tuple[Any, str]], prefix: str = "") -> str:
  """'step 12 (why); step 9 (why)'."""
  return "; ".join(f"{prefix}{what} ({why})" for what, why in unreadable)


# ----------------------------------------------------------------------------- parameters of a run

def default_restore_sharding() -> jax.sharding.Sharding:
  """Where restored arrays go without a target: this process's first device, or, with several
  processes, replicated over all devices (every process then holds the whole value)."""
  if jax.process_count() == 1:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return parallel.replicated(jax.sharding.Mesh(np.asarray(jax.devices()), (parallel.DATA_AXIS,)))


def _target_from_metadata(manager: ocp.CheckpointManager, step: int, item: str) -> Any:
  """The saved tree's shapes and dtypes with the default sharding: restores on any topology
  (Orbax would otherwise insist on the devices the checkpoint was written from)."""
  metadata = manager.item_metadata(step)[item]
  sharding = default_restore_sharding()
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                      getattr(metadata, "tree", metadata))


def _read_params(reader: ocp.CheckpointManager, kind: str, step: int, abstract_params: Any
                 ) -> tuple[Any, dict]:
  if kind == "latest":
    restored = reader.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_target_from_metadata(reader, step, "state")),
        meta=ocp.args.JsonRestore()))
    return restored["state"]["params"], restored["meta"]
  target = abstract_params
  if target is None:
    target = _target_from_metadata(reader, step, "params")
  restored = reader.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return restored["params"], restored["meta"]


def _candidates(workdir: str, order: Iterable[str], unreadable: list
                ) -> Iterator[tuple[str, ocp.CheckpointManager, int]]:
  """(kind, reader, step) in the order to try them; kinds Orbax cannot list go to `unreadable`."""
  for kind in order:
    if not io_utils.as_path(_root(workdir), kind).is_dir():
      continue
    reader, why = _attempt(functools.partial(_reader, workdir, kind))
    if why is not None:
      unreadable.append((kind, why))
      continue
    try:
      for step in _preferred_steps(reader):
        yield kind, reader, step
    finally:
      reader.close()


def restore_params(workdir: str, kind: str = "best_acc", abstract_params: Any = None
                   ) -> tuple[Any, dict]:
  """Parameters (and their meta) of a finished or running run, for evaluation and inference.

  Falls back from a best checkpoint to the other kinds when none has been saved yet or when it
  cannot be read (with a warning naming both), and raises CheckpointNotFoundError naming the
  directory when nothing can be read. Without abstract_params the arrays go where
  default_restore_sharding() says.
  """
  if kind not in ALL_KINDS:
    raise ValueError(f"unknown checkpoint kind {kind!r}; choose from {', '.join(ALL_KINDS)}")
  root = _root(workdir)
  unreadable = []  # (what, why)
  order = [kind] + [k for k in BEST_KINDS + ("latest",) if k != kind]  # the other best model first
  for k, reader, step in _candidates(workdir, order, unreadable):
    restored, why = _attempt(functools.partial(_read_params, reader, k, step, abstract_params))
    if why is not None:
      unreadable.append((f"{k} step {step}", why))
      continue
    if unreadable:
      logging.warning("unreadable checkpoint under %s: %s; using %s step %d instead", root,
                      _listed(unreadable), k, step)
    params, meta = restored
    return params, dict(meta, checkpoint=k, step=step)
  if unreadable:
    raise CheckpointNotFoundError(
        f"no readable checkpoint under {root}: {_listed(unreadable)}; train again "
        f"(python -m sevlm_jax.main --mode=train --workdir={workdir} ...)")
  raise CheckpointNotFoundError(
      f"no checkpoint under {root}: train first (python -m sevlm_jax.main --mode=train "
      f"--workdir={workdir} ...) or point --workdir at a finished run")


def has_checkpoint(workdir: str, kinds=ALL_KINDS) -> bool:
  """Does the workdir hold a finished step of any of these kinds? (A directory listing: cheap,
  so commands can check before any other work.)"""
  root = io_utils.as_path(_root(workdir))
  return any(p.name.isdigit() for kind in kinds if (root / kind).is_dir()
             for p in (root / kind).iterdir())
