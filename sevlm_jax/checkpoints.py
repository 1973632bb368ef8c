"""Orbax checkpoints of a run: the latest train state with its data iterator, and the best models.

Layout under the workdir:
  checkpoints/latest/<step>/{state,data,meta}             full train state + grain iterator state, for resuming
  checkpoints/best_acc/<step>/{params,meta,metrics}       parameters with the best validation accuracy
  checkpoints/best_bleu/<step>/{params,meta,metrics}      parameters with the best validation BLEU-4
Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never looks like a checkpoint. Every validation offers its parameters to both
best checkpoints and Orbax keeps the better (best_fn).

Several processes: every process calls every save and restore (they are collective). Orbax
writes each array's shards from the processes that hold them and the JSON meta from process
0; grain writes one iterator state per process (data/process_<i>-of-<n>.json), so a run
resumes with the same number of processes. The workdir must be on storage that every host
sees (a shared file system or a bucket path).
"""

import os
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from sevlm_jax import parallel
from sevlm_jax.errors import CheckpointNotFoundError

BEST_KINDS = ("best_acc", "best_bleu")
ALL_KINDS = ("latest",) + BEST_KINDS
BEST_METRIC = {"best_acc": "acc", "best_bleu": "bleu4"}  # the validation score each kind ranks by


def _options(max_to_keep: int, **best) -> ocp.CheckpointManagerOptions:
  # Synchronous saves: a save requested on SIGTERM must be on disk before the process exits.
  return ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                      enable_async_checkpointing=False, **best)


def _rank_by(metric: str) -> Callable[[dict], tuple]:
  """Orbax's best_fn: the higher score, and of two equal scores the earlier step (a tie is no
  improvement, so it does not reset early stopping's patience)."""
  return lambda metrics: (metrics[metric], -metrics["step"])


def _latest_manager(workdir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints", "latest"),
      options=_options(2),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})


def _params_manager(workdir: str, kind: str, create: bool = True) -> ocp.CheckpointManager:
  options = _options(1, best_fn=_rank_by(BEST_METRIC[kind]), best_mode="max",
                     keep_checkpoints_without_metrics=False)
  options.create = create
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints", kind), options=options,
      item_handlers={"params": ocp.StandardCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})


class RunCheckpoints:
  """The checkpoints of one training run."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.latest = _latest_manager(workdir)
    self.best = {kind: _params_manager(workdir, kind) for kind in BEST_KINDS}

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, step: int, state: Any, data_iterator, meta: dict) -> None:
    """Saves the train state at `step`; a step already on disk holds this same state and is kept."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)), force=True)
    self.latest.wait_until_finished()

  def restore_latest(self, abstract_state: Any, data_iterator) -> tuple[Any, dict]:
    """Restores state (into the given abstract shape) and the iterator in place; returns (state, meta).

    ShapeDtypeStructs that carry a sharding are restored straight into it (each process reads
    only its shards), whatever topology the checkpoint was saved from.
    """
    step = self.latest.latest_step()
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def save_best(self, step: int, params: Any, scores: dict[str, float]) -> list[str]:
    """Offers the parameters validated at `step` to each best checkpoint: Orbax keeps, per kind,
    the step with the highest score. Returns the kinds whose best is now `step`."""
    improved = []
    for kind, manager in self.best.items():
      record = {"step": step, **scores}
      if step in manager.all_steps():  # validated again after a resume: replaced
        manager.delete(step)
      manager.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(record)),
                   metrics=record, force=True)
      manager.wait_until_finished()
      if manager.best_step() == step:
        improved.append(kind)
    return improved

  def close(self) -> None:
    self.latest.close()
    for m in self.best.values():
      m.close()


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


def restore_params(workdir: str, kind: str = "best_acc", abstract_params: Any = None
                   ) -> tuple[Any, dict]:
  """Parameters (and their meta) of a finished or running run, for evaluation and inference.

  Falls back from a best checkpoint to the latest train state when no evaluation has
  happened yet, and raises CheckpointNotFoundError naming the directory otherwise.
  Without abstract_params the arrays go where default_restore_sharding() says.
  """
  if kind not in ALL_KINDS:
    raise ValueError(f"unknown checkpoint kind {kind!r}; choose from {', '.join(ALL_KINDS)}")
  root = os.path.join(os.path.abspath(workdir), "checkpoints")
  order = [kind] + [k for k in ALL_KINDS if k != kind]
  for k in order:
    directory = os.path.join(root, k)
    if not os.path.isdir(directory):
      continue
    if k == "latest":
      manager = _latest_manager(workdir)
      step = manager.latest_step()
      if step is None:
        continue
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_target_from_metadata(manager, step, "state")),
          meta=ocp.args.JsonRestore()))
      return restored["state"]["params"], dict(restored["meta"], checkpoint="latest", step=step)
    manager = _params_manager(workdir, k, create=False)
    step = manager.best_step()
    if step is None:
      continue
    target = abstract_params
    if target is None:
      target = _target_from_metadata(manager, step, "params")
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["params"], dict(restored["meta"], checkpoint=k, step=step)
  raise CheckpointNotFoundError(
      f"no checkpoint under {root}: train first (python -m sevlm_jax.main --mode=train "
      f"--workdir={workdir} ...) or point --workdir at a finished run")
