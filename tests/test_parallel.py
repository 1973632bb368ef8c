"""Data parallelism: the mesh and its checks, sharded input, and 4 devices training like one.

The multi-device checks run in a subprocess, this file run as a script with 4 simulated CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts,
and this pytest process has started it already). The script writes its results to a
directory; the tests below read them.
"""

import json
import pathlib
import subprocess
import sys
import time
import types

from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax import run as inputs
from sevlm_jax import parallel
from sevlm_jax import main
from sevlm_jax.training import loop as train
from sevlm_jax.data import pipeline
from sevlm_jax.data import records
from sevlm_jax.data import tokenizer as tokenizer_lib
import oracles
from helpers import compile_cache, demo_root, subprocess_env, tiny_config

NUM_DEVICES = 4
STEPS = 3
GLOBAL_BATCH = 8


# ----------------------------------------------------------------------------- pure pieces

def test_param_spec_shards_large_arrays_along_their_largest_divisible_dimension():
  assert parallel.param_spec((64, 256), 4, "fsdp", 1024) == P(None, "data")
  assert parallel.param_spec((256, 64), 4, "fsdp", 1024) == P("data", None)
  assert parallel.param_spec((50261, 64), 4, "fsdp", 1024) == P(None, "data")  # 50261 % 4 != 0
  assert parallel.param_spec((63, 65), 4, "fsdp", 1) == P()  # nothing divides: replicated
  assert parallel.param_spec((64,), 4, "fsdp", 1024) == P()  # small: replicated
  assert parallel.param_spec((), 4, "fsdp", 0) == P()
  assert parallel.param_spec((64, 256), 4, "replicated", 1024) == P()
  assert parallel.param_spec((64, 256), 1, "fsdp", 1024) == P()


def _devices(per_process: int, processes: int) -> list:
  devices = [types.SimpleNamespace(process_index=p, id=p * per_process + i, platform="gpu")
             for p in range(processes) for i in range(per_process)]
  return devices[::-1]  # any order in, process order out


def test_mesh_devices_take_as_many_from_each_process_in_process_order():
  chosen = parallel.mesh_devices(0, _devices(4, 2), 2)
  assert [d.id for d in chosen] == list(range(8))
  chosen = parallel.mesh_devices(4, _devices(4, 2), 2)
  assert [(d.process_index, d.id) for d in chosen] == [(0, 0), (0, 1), (1, 4), (1, 5)]
  with pytest.raises(errors.ConfigError, match=r"parallel.num_devices=16, but only 8 gpu"):
    parallel.mesh_devices(16, _devices(4, 2), 2)
  with pytest.raises(errors.ConfigError, match="split evenly over 2 processes"):
    parallel.mesh_devices(3, _devices(4, 2), 2)


def test_batch_not_divisible_by_the_devices_names_the_field_and_a_fix():
  mesh = types.SimpleNamespace(shape={"data": 4})
  parallel.check_batch_size("train.batch_size", 8, mesh)
  with pytest.raises(errors.ConfigError) as e:
    parallel.check_batch_size("train.batch_size", 6, mesh)
  assert "train.batch_size=6" in str(e.value) and "--config.train.batch_size=8" in str(e.value)
  assert parallel.padded_batch_size(6, mesh) == 8 and parallel.padded_batch_size(8, mesh) == 8


def test_distributed_init_only_when_the_launch_asks_for_it():
  config = tiny_config("unused").parallel
  assert parallel.distributed_args(config, {}) is None
  one_task = {"SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"}
  assert parallel.distributed_args(config, one_task) is None
  assert parallel.distributed_args(config, {"SLURM_NTASKS": "8"}) is None  # the batch script itself
  srun = {"SLURM_NTASKS": "8", "SLURM_STEP_NODELIST": "n[1-2]"}
  assert parallel.distributed_args(config, srun) == {"initialization_timeout": 300}
  assert parallel.distributed_args(config, {"TPU_WORKER_HOSTNAMES": "a,b"}) is not None
  config.distributed = "off"
  assert parallel.distributed_args(config, srun) is None
  config.distributed = "auto"
  config.update(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
  assert parallel.distributed_args(config, {}) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
      "initialization_timeout": 300}
  config.num_processes = 1
  assert parallel.distributed_args(config, {}) is None
  config.distributed = "sometimes"
  with pytest.raises(errors.ConfigError, match="parallel.distributed"):
    parallel.distributed_args(config, {})


def test_mesh_larger_than_the_devices_fails_before_any_work(tmp_path, tmp_path_factory):
  config = tiny_config(demo_root(tmp_path_factory), **{"parallel.num_devices": 2})
  workdir = tmp_path / "run"
  with pytest.raises(errors.ConfigError, match="parallel.num_devices=2, but only 1"):
    main.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()  # nothing prepared, nothing compiled
  config = tiny_config(demo_root(tmp_path_factory), **{"parallel.param_sharding": "zero3"})
  with pytest.raises(errors.ConfigError, match="parallel.param_sharding"):
    main.train_and_evaluate(config, str(workdir))


def test_process_blocks_of_the_training_batches_make_the_global_batches(tmp_path_factory):
  ready = demo_root(tmp_path_factory) / "ready"
  tokenizer = tokenizer_lib.load_tokenizer()

  def batches(shard_index, shard_count):
    loader = pipeline.train_loader(ready, tokenizer, batch_size=GLOBAL_BATCH // shard_count,
                                   max_len=24, seed=0, shard_index=shard_index,
                                   shard_count=shard_count)
    it = iter(loader)
    steps = pipeline.steps_per_epoch(ready, batch_size=GLOBAL_BATCH)
    return [next(it) for _ in range(steps + 2)]  # into the second epoch

  whole = batches(0, 1)
  parts = [batches(i, 2) for i in range(2)]
  for k, want in enumerate(whole):
    for key in want:
      got = np.concatenate([parts[0][k][key], parts[1][k][key]])
      np.testing.assert_array_equal(got, want[key], err_msg=f"batch {k} {key}")


def test_eval_batch_parts_together_are_the_eval_batches(tmp_path_factory):
  ready = demo_root(tmp_path_factory) / "ready"
  n = len(records.load_split(ready, "test"))
  whole = list(oracles.eval_batches(ready, "test", batch_size=8))
  parts = [list(pipeline.eval_batch_parts(ready, "test", batch_size=8, part_index=i, part_count=4))
           for i in range(4)]
  assert len(whole) == -(-n // 8) and all(len(p) == len(whole) for p in parts)
  for k, want in enumerate(whole):
    np.testing.assert_array_equal(np.concatenate([p[k]["image"] for p in parts]), want["image"])
    for p in parts:
      assert p[k]["image"].shape[0] == 2
      np.testing.assert_array_equal(p[k]["image_index"], want["image_index"])
      np.testing.assert_array_equal(p[k]["valid"], want["valid"])
  with pytest.raises(ValueError, match="multiple of part_count"):
    next(pipeline.eval_batch_parts(ready, "test", batch_size=6, part_count=4))


# ----------------------------------------------------------------------------- 4 devices

@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  """Runs this file as a script with 4 CPU devices; returns its output directory."""
  out = tmp_path_factory.mktemp("four_devices")
  env = subprocess_env(compile_cache(tmp_path_factory))
  env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={NUM_DEVICES}"
  t0 = time.time()
  result = subprocess.run([sys.executable, __file__, str(out), str(demo_root(tmp_path_factory))],
                          env=env, capture_output=True, text=True, timeout=600,
                          cwd=pathlib.Path(__file__).parent)
  assert result.returncode == 0, result.stderr[-5000:]
  print(f"4-device script: {time.time() - t0:.1f}s")
  return out


def _load(out, name):
  with np.load(out / f"{name}.npz") as f:
    return dict(f)


@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
def test_four_devices_train_like_one(four_devices, mode):
  results = json.loads((four_devices / "results.json").read_text())
  assert results["devices"] == NUM_DEVICES
  one, four = results["one/replicated"], results[f"four/{mode}"]
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
  assert one["losses"][-1] < one["losses"][0]  # the steps train
  want, got = _load(four_devices, "one_replicated"), _load(four_devices, f"four_{mode}")
  assert want.keys() == got.keys()
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
  if mode == "fsdp":  # the large arrays really were split, and so were their Adam moments
    assert four["sharded_params"] > 0 and four["sharded_opt_state"] >= four["sharded_trainable"] > 0
    assert four["param_spec"]["decoder/wte/embedding"] == [None, "data"]
  else:
    assert four["sharded_params"] == 0


def test_four_devices_decode_like_one(four_devices):
  results = json.loads((four_devices / "results.json").read_text())
  one, four = results["predict/one"], results["predict/four"]
  assert len(one) == results["test_images"] and four == one
  assert len({p["text"] for p in one}) > 1  # the random model says different things


def test_batch_not_divisible_by_four_devices_fails_before_any_work(four_devices):
  results = json.loads((four_devices / "results.json").read_text())
  error = results["indivisible_batch_error"]
  assert "train.batch_size=6" in error and "4 devices" in error
  assert not results["indivisible_batch_workdir_exists"]


# ----------------------------------------------------------------------------- the script

def _train_steps(config, run, params, batches, num_devices, mode):
  """STEPS sharded train steps over num_devices; (losses, host params, sharding summary)."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training import step as step_lib  # pylint: disable=import-outside-toplevel
  config.parallel.num_devices = num_devices
  config.parallel.param_sharding = mode
  config.parallel.fsdp_min_size = 1024
  mesh = train.check_parallel(config)
  # SGD with momentum, not the run's AdamW: Adam divides each gradient by its own running
  # scale, which turns the rounding noise of near-zero gradients (a sum of cancelling terms,
  # ordered differently on 4 devices) into updates of a good fraction of the learning rate.
  # Momentum still gives the optimiser a state to shard.
  tx = optax.sgd(0.1, momentum=0.9)
  state = step_lib.init_train_state(params, tx, config.optim.train_vision)
  shardings = parallel.tree_shardings(state, mesh, config.parallel)
  state = parallel.put(state, shardings)
  step = train.sharded_train_step(step_lib.make_train_step(run.model, config, tx, run.output_ids),
                                  mesh, shardings, config.seed)
  vad_table = parallel.put(run.vad_table, parallel.replicated(mesh))
  losses = []
  for batch in batches:
    state, metrics = step(state, parallel.shard_host_batch(batch, mesh), vad_table)
    losses.append(float(parallel.to_host(metrics["loss"])))
  is_split = lambda x: any(a is not None for a in x.sharding.spec)
  summary = {
      "losses": losses,
      "sharded_params": sum(map(is_split, jax.tree.leaves(state.params))),
      "sharded_trainable": sum(map(is_split, jax.tree.leaves(
          optim_lib.split_params(state.params, config.optim.train_vision)[0]))),
      "sharded_opt_state": sum(map(is_split, jax.tree.leaves(state.opt_state))),
      "param_spec": {"decoder/wte/embedding": list(
          state.params["decoder"]["wte"]["embedding"].sharding.spec)},
  }
  flat = {jax.tree_util.keystr(k): parallel.to_host(v)
          for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  return summary, flat


def _script(out: pathlib.Path, root: pathlib.Path) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from conftest import random_params  # pylint: disable=import-outside-toplevel
  from sevlm_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel
  flags.FLAGS.mark_as_parsed()
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  results = {"devices": jax.device_count()}
  config = tiny_config(root, **{"optim.warmup_steps": 0, "train.batch_size": GLOBAL_BATCH})
  run = inputs.prepare_run(config, str(out / "run"))
  params = random_params(run.model.config)
  loader = pipeline.train_loader(run.ready_dir, run.tokenizer, batch_size=GLOBAL_BATCH,
                                 max_len=config.data.max_len, seed=0, shard_index=0, shard_count=1)
  it = iter(loader)
  keys = ("image", "input_ids", "segment_ids", "token_mask", "labels")
  batches = [{k: b[k] for k in keys} for b in (next(it) for _ in range(STEPS))]
  for name, n, mode in (("one", 1, "replicated"), ("four", NUM_DEVICES, "replicated"),
                        ("four", NUM_DEVICES, "fsdp")):
    summary, flat = _train_steps(config, run, params, batches, n, mode)
    results[f"{name}/{mode}"] = summary
    np.savez(out / f"{name}_{mode}.npz", **flat)

  # Decoding: a batch of 6 is padded to 8 on 4 devices; a varied random model.
  varied = random_params(run.model.config, seed=1, std=0.3)
  config.eval.batch_size = 6
  for name, n, mode in (("one", 1, "replicated"), ("four", NUM_DEVICES, "fsdp")):
    config.parallel.update(num_devices=n, param_sharding=mode)
    results[f"predict/{name}"] = evaluate.predict_split(run, varied, "test", config)
  results["test_images"] = len(records.load_split(run.ready_dir, "test"))

  config.parallel.update(num_devices=0, param_sharding="replicated")
  config.train.batch_size = 6
  workdir = out / "indivisible"
  try:
    main.train_and_evaluate(config, str(workdir))
    results["indivisible_batch_error"] = ""
  except errors.ConfigError as e:
    results["indivisible_batch_error"] = str(e)
  results["indivisible_batch_workdir_exists"] = workdir.exists()
  (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
  _script(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
