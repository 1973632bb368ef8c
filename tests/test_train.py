"""The train step, the optimiser groups, checkpoints and resuming a killed run (the shared set-up
it uses is in helpers.py and conftest.py)."""

import json
import logging
import os
import pathlib
import re
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sevlm_jax import errors
from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax.training import optim as optim_lib
from sevlm_jax.training import step as step_lib
from helpers import (TINY, Background, compile_cache, demo_root, end_trained_run,
                     file_size_limit, load_config, main_args, run_main, start_trained_run,
                     truncate_array_files)

NUM_STEPS = TINY["train.num_steps"]


def latest_steps(workdir, kind: str = "latest") -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints" / kind
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def assert_trees_equal(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    if tol:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path), **tol)
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- the train step

def test_steps_lower_the_loss_on_a_fixed_batch(data, trainable_vision):
  _, batch, vad_table = data
  state, losses = trainable_vision.run(trainable_vision.state, batch, vad_table, 4)
  assert all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0] - 0.05, losses
  assert int(state.step) == 4 and int(state.skipped_steps) == 0


def test_trainable_vision_tower_changes(data, trainable_vision):
  _, batch, vad_table = data
  state, _ = trainable_vision.run(trainable_vision.state, batch, vad_table, 1)
  before = jax.tree.leaves(trainable_vision.params["vision"])
  after = jax.tree.leaves(state.params["vision"])
  assert all(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(after, before))


def test_frozen_vision_tower_is_bit_identical(data, frozen_no_vad):
  _, batch, vad_table = data
  state, losses = frozen_no_vad.run(frozen_no_vad.state, batch, vad_table, 2)
  assert all(np.isfinite(losses)), losses
  assert_trees_equal(state.params["vision"], frozen_no_vad.params["vision"])
  assert np.any(np.asarray(state.params["decoder"]["wte"]["embedding"])
                != frozen_no_vad.params["decoder"]["wte"]["embedding"])
  # The frozen tower has no optimiser state at all.
  assert not any("vision" in jax.tree_util.keystr(p)
                 for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state))


def test_training_without_vad_embedding(data, frozen_no_vad):
  _, batch, vad_table = data
  assert "vad_encoder" not in frozen_no_vad.params and "vad_fusion" not in frozen_no_vad.params
  state, losses = frozen_no_vad.run(frozen_no_vad.state, batch, vad_table, 4)
  assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses
  assert set(state.params) == set(frozen_no_vad.params)


def test_non_finite_loss_leaves_the_state_unchanged(data, trainable_vision):
  _, batch, vad_table = data
  s = trainable_vision
  state, _ = s.run(s.state, batch, vad_table, 1)  # a state with non-trivial optimiser moments
  bad_params = jax.tree.map(np.asarray, state.params)
  bad_params["vad_head"]["kernel"] = np.full_like(bad_params["vad_head"]["kernel"], np.nan)
  bad = state.replace(params=bad_params)
  after, metrics = s.step(bad, batch, vad_table, jax.random.PRNGKey(1))
  assert not np.isfinite(float(metrics["loss"])) and float(metrics["finite"]) == 0.0
  assert int(after.skipped_steps) == int(bad.skipped_steps) + 1
  assert int(after.step) == int(bad.step) + 1  # the step counter counts every batch
  assert_trees_equal(after.params, bad.params)
  assert_trees_equal(after.opt_state, bad.opt_state)
  # The next finite batch trains normally again.
  good, metrics = s.step(after.replace(params=state.params), batch, vad_table, jax.random.PRNGKey(1))
  assert float(metrics["finite"]) == 1.0 and int(good.skipped_steps) == 1


def test_global_norm_is_the_norm_of_all_leaves():
  rng = np.random.default_rng(0)
  tree = {"s": np.float32(3.0), "v": rng.standard_normal(7).astype(np.float32),
          "m": {"k": rng.standard_normal((5, 300)).astype(np.float32),
                "t": rng.standard_normal((2, 3, 4)).astype(np.float32)}}
  expected = np.sqrt(sum(np.sum(np.square(np.float64(x))) for x in jax.tree.leaves(tree)))
  np.testing.assert_allclose(jax.jit(step_lib.global_norm)(tree), expected, rtol=1e-6)
  half = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), tree)  # squared in float32
  np.testing.assert_allclose(step_lib.global_norm(half), np.sqrt(sum(
      np.sum(np.square(np.float64(np.asarray(x, np.float32)))) for x in jax.tree.leaves(half))),
                             rtol=1e-6)


@pytest.mark.parametrize("ok", [True, False])
def test_guard_keeps_new_or_old_leaves_of_every_shape(ok):
  """Leaves of a shared shape select through one mask array, the others through the scalar:
  both pick the new values when ok and the old ones otherwise."""
  rng = np.random.default_rng(0)
  shapes = {"a": (4, 3), "b": (4, 3), "c": (5,), "d": (), "e": (), "f": (2, 2, 2)}
  old = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  new = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}

  @jax.jit
  def select(ok, new, old):
    return jax.tree.map(step_lib.guard(ok, old), new, old)

  got = select(jnp.bool_(ok), new, old)
  assert_trees_equal(got, new if ok else old)


# ----------------------------------------------------------------------------- early stopping

@pytest.mark.parametrize("patience", [10, 11])
def test_patience_is_the_number_of_evaluations_without_improvement_that_stops(patience):
  """train.patience=11 is the public code's rule: it stops once more than 10 evaluations in a
  row (its stop_after_evals) have not improved."""
  from sevlm_jax.training import loop as loop_lib  # pylint: disable=import-outside-toplevel
  config = load_config("demo")
  config.train.patience = patience
  scores = iter([0.5] + [0.1] * 20)  # one improvement, then none
  ckpts = type("Ckpts", (), {"save_best": lambda self, step, params, val: (
      {"best_acc"} if step == 1 else set())})()
  writer = type("Writer", (), {"write_scalars": lambda self, *a: None})()
  state = type("State", (), {"params": None})()
  history = {"evals": 0, "evals_without_improvement": 0}
  validate = lambda params: {"acc": next(scores), "bleu4": 0.0}
  stops = [loop_lib._validate(config, validate, state, step, history, ckpts, writer)
           for step in range(1, 16)]
  assert stops.index(True) == patience  # evaluation patience + 1 (the first one improved)


# ----------------------------------------------------------------------------- the optimiser

def _optim_config(**overrides) -> ml_collections.ConfigDict:
  config = load_config("artemis_v1").optim
  config.update(dict(lr=1e-3, vad_encoder_lr=4e-3, vision_lr=2e-4, weight_decay=0.0,
                     warmup_steps=0, grad_clip_norm=0.0))
  config.update(overrides)
  return config


TOY = {name: {"w": np.zeros(3, np.float32)} for name in
       ("vision", "decoder", "vad_encoder", "vad_fusion", "vad_head", "contrastive_head")}


def _first_update(config, trainable):
  tx = optim_lib.create_optimizer(config, trainable, total_steps=100)
  grads = jax.tree.map(np.ones_like, trainable)
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  # Adam's first update is -lr * sign(grad) (up to eps), so it reads back each group's lr.
  return {name: float(-u["w"][0]) for name, u in updates.items()}


def test_each_group_gets_its_learning_rate():
  lr = _first_update(_optim_config(), TOY)
  np.testing.assert_allclose(lr["vad_encoder"], 4e-3, rtol=1e-4)
  np.testing.assert_allclose(lr["vision"], 2e-4, rtol=1e-4)
  for name in ("decoder", "vad_fusion", "vad_head", "contrastive_head"):
    np.testing.assert_allclose(lr[name], 1e-3, rtol=1e-4, err_msg=name)


def test_frozen_vision_is_not_given_to_the_optimiser():
  trainable, frozen = optim_lib.split_params(TOY, train_vision=False)
  assert set(frozen) == {"vision"} and "vision" not in trainable
  merged = optim_lib.merge_params(trainable, frozen)
  assert set(merged) == set(TOY) and all(merged[k] is TOY[k] for k in TOY)
  lr = _first_update(_optim_config(), trainable)
  assert set(lr) == set(TOY) - {"vision"}
  np.testing.assert_allclose(lr["vad_encoder"], 4e-3, rtol=1e-4)


def test_adam_eps_reaches_the_update():
  trainable = {"decoder": {"w": np.zeros(3, np.float32)}}
  tx = optim_lib.create_optimizer(_optim_config(adam_eps=1e-6), trainable, total_steps=100)
  grads = {"decoder": {"w": np.full(3, 1e-6, np.float32)}}
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  # First step: -lr * g / (|g| + eps) = -lr / 2 when g = eps.
  np.testing.assert_allclose(updates["decoder"]["w"], -1e-3 / 2, rtol=1e-4)


def _transformers_adamw_reference(p, grads, lrs, *, b1=0.9, b2=0.999, eps=1e-6, wd=0.0):
  """transformers 4.x AdamW.step (correct_bias=True), restated in float64 numpy."""
  m, v = np.zeros_like(p), np.zeros_like(p)
  for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) + eps
    step_size = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    p = p - step_size * m / denom
    p = p + p * (-lr * wd)
  return p


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_transformers_adamw_matches_its_reference(weight_decay):
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=5)
  grads = [rng.normal(size=5) * 1e-5 for _ in range(4)]  # small: eps's placement matters
  config = _optim_config(lr=0.1, adam_eps=1e-6, adam_form="transformers", weight_decay=weight_decay)
  trainable = {"decoder": {"w": p0.astype(np.float32)}}
  tx = optim_lib.create_optimizer(config, trainable, total_steps=8)
  state = tx.init(trainable)
  for g in grads:
    updates, state = tx.update({"decoder": {"w": g.astype(np.float32)}}, state, trainable)
    trainable = optax.apply_updates(trainable, updates)
  schedule = optim_lib.learning_rate_schedule(0.1, 8, 0)
  want = _transformers_adamw_reference(p0, grads, [float(schedule(k)) for k in range(4)],
                                       wd=weight_decay)
  np.testing.assert_allclose(trainable["decoder"]["w"], want, rtol=1e-5, atol=1e-7)
  # optax's form with the same eps differs (eps outside the bias correction).
  optax_tx = optim_lib.create_optimizer(_optim_config(lr=0.1, adam_eps=1e-6), {"decoder": {"w": p0}}, 8)
  first, _ = optax_tx.update({"decoder": {"w": grads[0]}}, optax_tx.init({"decoder": {"w": p0}}),
                             {"decoder": {"w": p0}})
  hf_first = _transformers_adamw_reference(p0, grads[:1], [0.1], wd=0.0) - p0
  assert not np.allclose(first["decoder"]["w"], hf_first, rtol=1e-3)


def test_schedule_warms_up_then_decays_to_zero():
  schedule = optim_lib.learning_rate_schedule(1.0, total_steps=10, warmup_steps=4)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 2, 4, 7, 10)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  no_warmup = optim_lib.learning_rate_schedule(1.0, total_steps=10, warmup_steps=0)
  np.testing.assert_allclose([float(no_warmup(s)) for s in (0, 5, 10)], [1.0, 0.5, 0.0], atol=1e-6)


# ----------------------------------------------------------------------------- checkpoints

def test_restore_latest_restores_state_and_data_iterator(tmp_path, loader):
  make_loader, expected = loader

  it = make_loader()
  for _ in range(3):
    next(it)
  state = {"step": np.int32(3), "w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  meta = {"evals": 1, "best_acc": 0.25}
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  ckpts.save_latest(3, state, it, meta)
  ckpts.save_latest(3, state, it, meta)  # saving a step that is on disk keeps it
  ckpts.close()

  resumed = make_loader()
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  assert ckpts.latest_step() == 3
  restored, restored_meta = ckpts.restore_latest(jax.eval_shape(lambda: state), resumed)
  ckpts.close()
  assert restored_meta == meta
  assert_trees_equal(restored, state)
  for want in expected[3:5]:
    got = next(resumed)
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _params(value: float) -> dict:
  return {"decoder": {"w": np.full(3000, value, np.float32)}}


def test_best_checkpoints_keep_the_highest_score(tmp_path):
  """Orbax keeps, per kind, the step with the highest score (best_fn); a tie keeps the earlier."""
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  scores = {6: (0.5, 0.1), 12: (0.4, 0.2), 18: (0.5, 0.2), 24: (0.6, 0.0)}
  improved = [ckpts.save_best(step, _params(step), {"acc": acc, "bleu4": bleu})
              for step, (acc, bleu) in scores.items()]
  assert improved == [["best_acc", "best_bleu"], ["best_bleu"], [], ["best_acc"]]
  ckpts.close()
  assert latest_steps(tmp_path, "best_acc") == [24] and latest_steps(tmp_path, "best_bleu") == [12]
  restored, meta = ckpt_lib.restore_params(str(tmp_path), "best_bleu")
  np.testing.assert_array_equal(restored["decoder"]["w"], _params(12)["decoder"]["w"])
  assert meta == {"checkpoint": "best_bleu", "step": 12, "acc": 0.4, "bleu4": 0.2}

  # A resumed run may validate a kept step again: the checkpoint is replaced, not an error.
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  assert ckpts.save_best(12, _params(-1), {"acc": 0.4, "bleu4": 0.2}) == ["best_bleu"]
  ckpts.close()
  restored, _ = ckpt_lib.restore_params(str(tmp_path), "best_bleu")
  np.testing.assert_array_equal(restored["decoder"]["w"], _params(-1)["decoder"]["w"])
  # No best_bleu checkpoint: falls back to the others rather than failing.
  shutil.rmtree(tmp_path / "checkpoints" / "best_bleu")
  _, meta = ckpt_lib.restore_params(str(tmp_path), "best_bleu")
  assert (meta["checkpoint"], meta["step"]) == ("best_acc", 24)
  with pytest.raises(ValueError, match="unknown checkpoint kind"):
    ckpt_lib.restore_params(str(tmp_path), "best_loss")


def _warnings(caplog, text: str) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and text in r.getMessage()]


def test_restore_params_falls_back_from_an_unreadable_best(tmp_path, caplog):
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  ckpts.save_best(6, _params(6), {"acc": 0.5, "bleu4": 0.1})
  ckpts.save_best(12, _params(12), {"acc": 0.4, "bleu4": 0.2})
  ckpts.close()
  root = tmp_path / "checkpoints"
  truncate_array_files(root / "best_acc" / "6" / "params")
  with caplog.at_level(logging.WARNING):
    restored, meta = ckpt_lib.restore_params(str(tmp_path), "best_acc")
  assert (meta["checkpoint"], meta["step"]) == ("best_bleu", 12)
  np.testing.assert_array_equal(restored["decoder"]["w"], _params(12)["decoder"]["w"])
  [warning] = _warnings(caplog, "unreadable checkpoint")
  assert f"under {root}: best_acc step 6 (" in warning and "using best_bleu step 12 instead" in warning

  # Nothing readable: one line naming the directory and each step's cause.
  truncate_array_files(root / "best_bleu" / "12" / "params")
  with pytest.raises(errors.CheckpointNotFoundError) as e:
    ckpt_lib.restore_params(str(tmp_path), "best_acc")
  message = str(e.value)
  assert "\n" not in message and f"no readable checkpoint under {root}" in message
  assert "best_acc step 6 (" in message and "best_bleu step 12 (" in message and "train again" in message

  # Orbax cannot even list a best checkpoint whose metrics file is cut: a training run sets the
  # kind aside (and starts it again), and restore_params takes the next kind.
  (root / "best_acc" / "6" / "metrics" / "metrics").write_text("{")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    ckpt_lib.RunCheckpoints(str(tmp_path)).close()
  assert _warnings(caplog, f"{root / 'best_acc'} is unreadable")
  assert (root / "unreadable" / "best_acc" / "6").is_dir() and latest_steps(tmp_path, "best_acc") == []


def test_restore_params_without_checkpoints_names_the_directory(tmp_path):
  with pytest.raises(errors.CheckpointNotFoundError, match=str(tmp_path / "checkpoints")):
    ckpt_lib.restore_params(str(tmp_path))


def _state(step: int) -> dict:
  """A small train state whose arrays each fill a file of their own (OCDBT stores tiny ones inline)."""
  rng = np.random.default_rng(step)
  return {"step": np.int32(step), "params": {"w": rng.standard_normal((64, 96)).astype(np.float32)}}


def _save_steps(workdir, make_loader, steps) -> None:
  """A run's latest checkpoints at `steps`: each step's state, and the iterator after that many
  batches."""
  it, done = make_loader(), 0
  ckpts = ckpt_lib.RunCheckpoints(str(workdir))
  for step in steps:
    for _ in range(step - done):
      next(it)
    done = step
    ckpts.save_latest(step, _state(step), it, {"evals": step})
  ckpts.close()


def _assert_next_batch(it, want) -> None:
  got = next(it)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _empty(path: pathlib.Path) -> None:
  path.write_text("")


CORRUPTIONS = {  # what can happen to the newest step, and where
    "truncated_array_files": lambda step_dir: truncate_array_files(step_dir / "state"),
    "empty_data_iterator_file": lambda step_dir: _empty(step_dir / "data" / "process_0-of-1.json"),
    "empty_array_metadata": lambda step_dir: _empty(step_dir / "state" / "_METADATA"),
    "empty_meta": lambda step_dir: _empty(step_dir / "meta" / "metadata"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_resume_falls_back_to_the_newest_readable_step(corruption, loader, tmp_path, caplog):
  make_loader, batches = loader
  _save_steps(tmp_path, make_loader, (3, 6))
  latest = tmp_path / "checkpoints" / "latest"
  CORRUPTIONS[corruption](latest / "6")

  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  resumed = make_loader()
  with caplog.at_level(logging.WARNING):
    state, meta = ckpts.restore_latest(jax.eval_shape(lambda: _state(0)), resumed)
  assert meta == {"evals": 3}
  assert_trees_equal(state, _state(3))
  _assert_next_batch(resumed, batches[3])
  [warning] = _warnings(caplog, "unreadable checkpoint")
  assert f"in {latest}: step 6 (" in warning and "resuming from step 3 instead" in warning
  # The unreadable step is set aside (nothing deleted), so the run saves step 6 again.
  assert (tmp_path / "checkpoints" / "unreadable" / "latest_6").is_dir() and latest_steps(tmp_path) == [3]
  assert ckpts.latest_step() == 3
  for _ in range(2):  # to batch 6
    next(resumed)
  ckpts.save_latest(6, _state(6), resumed, {"evals": 6})
  ckpts.close()
  again = make_loader()
  state, meta = ckpt_lib.RunCheckpoints(str(tmp_path)).restore_latest(
      jax.eval_shape(lambda: _state(0)), again)
  assert meta == {"evals": 6}
  assert_trees_equal(state, _state(6))
  _assert_next_batch(again, batches[6])


def test_resume_without_a_readable_step_is_one_clear_error(loader, tmp_path):
  make_loader, _ = loader
  _save_steps(tmp_path, make_loader, (3, 6))
  latest = tmp_path / "checkpoints" / "latest"
  CORRUPTIONS["empty_data_iterator_file"](latest / "6")
  CORRUPTIONS["truncated_array_files"](latest / "3")
  with pytest.raises(errors.CheckpointNotFoundError) as e:
    ckpt_lib.RunCheckpoints(str(tmp_path)).restore_latest(jax.eval_shape(lambda: _state(0)),
                                                          make_loader())
  message = str(e.value)
  assert "\n" not in message and f"no readable checkpoint in {latest}: step 6 (JSONDecodeError" in message
  assert "step 3 (" in message and "start the run afresh" in message
  # Nothing is moved: when no step reads, the config (not the files) may be what changed.
  assert latest_steps(tmp_path) == [3, 6] and not (tmp_path / "checkpoints" / "unreadable").exists()


def test_a_failed_save_is_one_error_and_never_a_checkpoint(loader, tmp_path):
  """A write that fails (here past a file-size limit, as on a full disk) ends in one UserError
  naming the directory and the cause; the half-written step is never taken for a checkpoint."""
  make_loader, batches = loader
  _save_steps(tmp_path, make_loader, (3,))
  w = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)  # 4 MB
  big = {"step": np.int32(6), "params": {"w": w}}
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  latest = tmp_path / "checkpoints" / "latest"
  with file_size_limit(1 << 20), pytest.raises(errors.UserError) as e:
    ckpts.save_latest(6, big, make_loader(), {})
    ckpts.close()  # an asynchronous save's failure shows at the latest here
  message = str(e.value)
  assert message.startswith(f"cannot save a checkpoint in {latest}: File too large;"), message
  assert "\n" not in message
  assert latest_steps(tmp_path) == [3] and [p.name for p in latest.iterdir() if "tmp" in p.name]
  # The next run resumes from the last complete step and, saving again, deletes the leftovers.
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  assert ckpts.latest_step() == 3
  resumed = make_loader()
  state, _ = ckpts.restore_latest(jax.eval_shape(lambda: _state(0)), resumed)
  assert_trees_equal(state, _state(3))
  _assert_next_batch(resumed, batches[3])
  ckpts.save_latest(4, _state(4), resumed, {})
  ckpts.close()
  assert latest_steps(tmp_path) == [3, 4] and not [p.name for p in latest.iterdir() if "tmp" in p.name]


# ----------------------------------------------------------------------------- kill and resume

@pytest.fixture(scope="module", autouse=True)
def _shared_run_trains_meanwhile(request, tmp_path_factory):
  """Starts the shared tiny run's training now, so that it overlaps this module's in-process tests."""
  if any("tiny_run" in item.fixturenames for item in request.session.items):
    start_trained_run(tmp_path_factory)
  yield
  # Trained here but needed by no test here: its result is recorded for the other modules.
  end_trained_run(tmp_path_factory, kill=request.session.shouldfail or request.session.shouldstop)


def _train_losses(workdir) -> dict[int, float]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["split"] == "train"}


def _assert_resumed_exactly(workdir, tiny_run, stopped_at: int, rerun) -> None:
  """The rerun resumed from `stopped_at` and ended with the uninterrupted run's parameters and losses."""
  assert rerun.returncode == 0, rerun.stderr[-5000:]
  # It resumed (a fresh start would reach the same parameters too).
  assert re.search(rf"resum.*step {stopped_at}\b", rerun.stderr), rerun.stderr[-3000:]
  assert latest_steps(workdir)[-1] == NUM_STEPS
  assert (workdir / "metrics_test.json").exists()

  resumed, meta = ckpt_lib.restore_params(str(workdir), "latest")
  straight, straight_meta = ckpt_lib.restore_params(str(tiny_run), "latest")
  assert meta["step"] == straight_meta["step"] == NUM_STEPS
  assert meta["best_acc_step"] == straight_meta["best_acc_step"]
  # Same state and the same batches after the restart: equal up to float32 rounding.
  assert_trees_equal(resumed, straight, rtol=1e-6, atol=1e-7)
  resumed_losses, straight_losses = _train_losses(workdir), _train_losses(tiny_run)
  assert set(resumed_losses) == set(straight_losses)
  for step, loss in resumed_losses.items():
    np.testing.assert_allclose(loss, straight_losses[step], rtol=1e-5, err_msg=f"step {step}")


def _run_dir(tiny_run, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "run"
  # The EA judge only scores the final evaluation; reuse the reference's to save its training.
  shutil.copytree(tiny_run / "judge", workdir / "judge")
  return workdir


def test_sigterm_then_rerun_resumes_exactly(tiny_run, tmp_path, tmp_path_factory):
  """A run stopped by SIGTERM and restarted ends with the uninterrupted run's parameters."""
  cache = compile_cache(tmp_path_factory)
  workdir = _run_dir(tiny_run, tmp_path)
  args = main_args(demo_root(tmp_path_factory), workdir)

  first_run = Background(args, cache, tmp_path / "first")
  deadline = time.time() + 300
  while not latest_steps(workdir) and first_run.proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  first_checkpoint = latest_steps(workdir)
  first_run.proc.send_signal(signal.SIGTERM)
  result = first_run.result(timeout=120)
  assert first_checkpoint, f"no checkpoint appeared before the run ended:\n{result.stderr[-3000:]}"
  stopped_at = latest_steps(workdir)[-1]
  assert first_checkpoint[0] <= stopped_at < NUM_STEPS, "SIGTERM came after the last step"
  assert result.returncode in (0, 128 + signal.SIGTERM), result.stderr[-3000:]
  assert not (workdir / "metrics_test.json").exists()

  rerun = run_main(args, cache, tmp_path / "second")  # the same command again
  _assert_resumed_exactly(workdir, tiny_run, stopped_at, rerun)


def test_kill_9_while_saving_then_rerun_resumes_exactly(tiny_run, tmp_path, tmp_path_factory):
  """SIGKILL while the second checkpoint is being written (asynchronously, as training goes on):
  the half-written step is no checkpoint, and the rerun resumes exactly from the first."""
  cache = compile_cache(tmp_path_factory)
  workdir = _run_dir(tiny_run, tmp_path)
  latest = workdir / "checkpoints" / "latest"
  args = main_args(demo_root(tmp_path_factory), workdir)
  second = 2 * TINY["train.checkpoint_every"]

  first_run = Background(args, cache, tmp_path / "first")
  deadline = time.time() + 300
  writing = []
  while first_run.proc.poll() is None and time.time() < deadline:
    names = os.listdir(latest) if latest.is_dir() else []
    writing = [n for n in names if n.startswith(f"{second}.") and "tmp" in n]
    if writing or str(second) in names:
      break
    time.sleep(0.002)
  first_run.proc.kill()
  result = first_run.result(timeout=60)
  assert result.returncode == -signal.SIGKILL, f"the run ended first:\n{result.stderr[-3000:]}"
  assert writing, f"step {second} was complete before the kill: {sorted(os.listdir(latest))}"
  assert latest_steps(workdir) == [TINY["train.checkpoint_every"]]

  rerun = run_main(args, cache, tmp_path / "second")
  _assert_resumed_exactly(workdir, tiny_run, TINY["train.checkpoint_every"], rerun)
  assert not [n for n in os.listdir(latest) if "tmp" in n]  # the leftovers are gone
