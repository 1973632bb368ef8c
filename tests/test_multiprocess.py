"""Two processes on this machine train one model through JAX's distributed runtime.

Each process is this file run as a script: it joins the other through
jax.distributed.initialize (a loopback coordinator, gloo collectives on CPU, 2 CPU devices
per process, so a 4-device mesh with fsdp parameters), trains the tiny model for a few steps
with the real training loop (its own block of every batch, validation, checkpoints from both
processes), then restores the latest checkpoint into the sharded layout and writes the
parameters it holds, and gets the EA judge (process 0 trains and saves it, the other loads it).
A single process trained the same way is the reference. Another pair is stopped by a SIGTERM
to one of them.
"""

import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import compile_cache, demo_root, subprocess_env, tiny_config

STEPS = 4
STOP_STEPS = 200  # the SIGTERM comes long before
MAX_LR = 2e-3  # the demo config's peak learning rate (the test's steps are in its warm-up)
TIMEOUT_S = 420  # for the whole test; every process is killed when it is over


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(args, env, log_prefix: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
  """This file as a script; its output goes to files, so no pipe fills up."""
  with open(f"{log_prefix}.stdout", "w") as out, open(f"{log_prefix}.stderr", "w") as err:
    proc = subprocess.Popen([sys.executable, __file__, *map(str, args)], env=env, stdout=out,
                            stderr=err, cwd=pathlib.Path(__file__).parent)
  return proc, pathlib.Path(f"{log_prefix}.stderr")


def _wait_all(procs: dict, deadline: float) -> None:
  """Waits for every process; on a failure or the deadline kills them all and shows their stderr."""
  try:
    for proc, _ in procs.values():
      proc.wait(timeout=max(deadline - time.time(), 1))
    failed = [name for name, (proc, _) in procs.items() if proc.returncode != 0]
  except subprocess.TimeoutExpired:
    failed = [f"still running after {TIMEOUT_S}s"]
  finally:
    for proc, _ in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  if failed:
    raise AssertionError(f"failed: {failed}\n" + "\n".join(
        f"--- {name} (exit {proc.returncode}) stderr:\n{stderr.read_text()[-4000:]}"
        for name, (proc, stderr) in procs.items()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two processes training together, and one process alone; returns their output directories."""
  root = demo_root(tmp_path_factory)
  base = tmp_path_factory.mktemp("multiprocess")
  env = subprocess_env(compile_cache(tmp_path_factory))
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
  port = _free_port()
  procs = {}
  t0 = time.time()
  for pid in range(2):
    procs[f"process {pid}"] = _start(["--distributed", pid, port, base / "pair", root], env,
                                     base / f"process{pid}")
  procs["alone"] = _start(["--alone", 0, 0, base / "alone", root], env, base / "alone")
  _wait_all(procs, t0 + TIMEOUT_S)
  print(f"three processes done in {time.time() - t0:.1f}s")
  return base / "pair", base / "alone"


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """Two processes training together; once they have taken two steps, process 1 alone gets a
  SIGTERM. Returns their output directory."""
  root = demo_root(tmp_path_factory)
  base = tmp_path_factory.mktemp("multiprocess_stop")
  env = subprocess_env(compile_cache(tmp_path_factory))
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
  port = _free_port()
  procs = {f"process {pid}": _start(["--sigterm", pid, port, base, root], env, base / f"process{pid}")
           for pid in range(2)}
  deadline = time.time() + TIMEOUT_S
  metrics = base / "run" / "metrics.jsonl"
  while time.time() < deadline and all(p.poll() is None for p, _ in procs.values()):
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
      break
    time.sleep(0.1)
  procs["process 1"][0].send_signal(signal.SIGTERM)
  _wait_all(procs, deadline)
  return base


def _summary(out, pid=0):
  return json.loads((out / f"summary_{pid}.json").read_text())


def _params(out, pid=0):
  with np.load(out / f"restored_{pid}.npz") as f:
    return dict(f)


def test_processes_share_one_mesh_and_split_the_parameters(runs):
  pair, _ = runs
  s0, s1 = _summary(pair, 0), _summary(pair, 1)
  assert (s0["process_index"], s1["process_index"]) == (0, 1)
  assert s0["process_count"] == s1["process_count"] == 2
  assert s0["device_count"] == 4 and s0["local_device_count"] == 2
  # fsdp: the word embeddings are split over the 4 devices, each process holding half of them
  assert s0["wte_local_columns"] == s1["wte_local_columns"] == s0["wte_shape"][1] // 2
  assert _summary(runs[1])["wte_local_columns"] == s0["wte_shape"][1]  # alone: all of it


def test_processes_agree_on_the_restored_parameters(runs):
  pair, _ = runs
  p0, p1 = _params(pair, 0), _params(pair, 1)
  assert p0.keys() == p1.keys()
  for key in p0:
    np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)
  assert _summary(pair, 0)["restored_step"] == STEPS
  assert _summary(pair, 0)["evaluations"] == _summary(pair, 1)["evaluations"] == 2


def test_two_processes_train_like_one(runs):
  pair, alone = runs
  losses = [_train_losses(d) for d in (pair, alone)]
  assert sorted(losses[0]) == list(range(1, STEPS + 1))  # one line per step: process 0 writes
  for step in losses[1]:
    np.testing.assert_allclose(losses[0][step], losses[1][step], rtol=1e-5, err_msg=f"step {step}")
  # Parameters: AdamW divides each gradient by its running scale, so where the gradient is
  # zero in exact arithmetic (a bias added to every attention key, or to every contrastive
  # score) its rounding noise, summed in another order on 4 devices, still moves the parameter
  # by up to the learning rate. Those few agree only that far; all the others to float32.
  together, single = _params(pair), _params(alone)
  assert together.keys() == single.keys()
  differ = total = 0
  for key in single:
    np.testing.assert_allclose(together[key], single[key], atol=STEPS * MAX_LR, err_msg=key)
    differ += np.sum(~np.isclose(together[key], single[key], rtol=1e-5, atol=1e-6))
    total += single[key].size
  assert differ < 1e-3 * total, f"{differ} of {total} parameters differ"


def test_processes_share_the_ea_judge(runs):
  pair, _ = runs
  assert (pair / "run" / "judge" / "params").is_dir()  # an Orbax checkpoint, saved by process 0
  assert _summary(pair, 0)["judge_heldout_accuracy"] == _summary(pair, 1)["judge_heldout_accuracy"]


def test_a_sigterm_to_one_process_stops_both_at_one_step_with_a_checkpoint(stopped):
  """Both processes stop at the same step, save it together and report the run unfinished."""
  s0, s1 = _summary(stopped, 0), _summary(stopped, 1)
  assert not s0["finished"] and not s1["finished"]
  assert 2 <= s0["step"] == s1["step"] < STOP_STEPS
  latest = stopped / "run" / "checkpoints" / "latest"
  assert sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit()) == [s0["step"]]
  logged = sorted(_train_losses(stopped))
  assert logged == list(range(1, s0["step"] + 1))


def _train_losses(out) -> dict[int, float]:
  lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
  rows = [json.loads(line) for line in lines]
  train = [r for r in rows if r["split"] == "train"]
  assert len({r["step"] for r in train}) == len(train), "a step was logged twice"
  return {r["step"]: r["loss"] for r in train}


# ----------------------------------------------------------------------------- the worker

def _worker(mode: str, pid: int, port: int, out: pathlib.Path, root: pathlib.Path) -> None:
  overrides = {"train.num_steps": STEPS, "train.batch_size": 8, "train.log_every": 1,
               "train.eval_every": STEPS // 2, "train.checkpoint_every": STEPS // 2,
               "parallel.param_sharding": "fsdp", "parallel.fsdp_min_size": 1024}
  if mode == "--sigterm":  # no validation, no periodic checkpoint: only the stop's
    overrides.update({"train.num_steps": STOP_STEPS, "train.eval_every": 10 * STOP_STEPS,
                      "train.checkpoint_every": 10 * STOP_STEPS})
  if mode in ("--distributed", "--sigterm"):
    overrides.update({"parallel.coordinator_address": f"127.0.0.1:{port}",
                      "parallel.num_processes": 2, "parallel.process_id": pid,
                      "parallel.initialization_timeout": 120})
  else:
    overrides["parallel.num_devices"] = 1
  config = tiny_config(root, **overrides)

  from sevlm_jax import parallel  # pylint: disable=import-outside-toplevel
  assert parallel.maybe_initialize_distributed(config.parallel) == (mode != "--alone")
  import jax  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from sevlm_jax import checkpoints as ckpt_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax import run as inputs  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training import loop as train  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training import step as step_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training.metrics_writer import MetricsWriter  # pylint: disable=import-outside-toplevel
  flags.FLAGS.mark_as_parsed()

  workdir = str(out / "run")
  mesh = train.check_parallel(config)
  run = parallel.primary_first(lambda: inputs.prepare_run(config, workdir), "prepare_run")
  writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
  step, finished = train.train(config, workdir, run, mesh, writer, evaluate.validator(run, config))
  writer.close()
  if mode == "--sigterm":
    summary = {"step": step, "finished": finished}
    (out / f"summary_{jax.process_index()}.json").write_text(json.dumps(summary))
    return
  assert (step, finished) == (STEPS, True)

  # Restore the latest checkpoint straight into the sharded layout, as a resumed run does.
  trainable, _ = optim_lib.split_params(run.abstract_params, config.optim.train_vision)
  tx = optim_lib.create_optimizer(config.optim, trainable, STEPS)
  abstract = jax.eval_shape(lambda p: step_lib.init_train_state(p, tx, True), run.abstract_params)
  shardings = parallel.tree_shardings(abstract, mesh, config.parallel)
  part, parts = parallel.process_part(mesh)
  data_iter = iter(pipeline.train_loader(run.ready_dir, run.tokenizer, batch_size=8 // parts,
                                         max_len=config.data.max_len, seed=config.seed,
                                         shard_index=part, shard_count=parts))
  ckpts = ckpt_lib.RunCheckpoints(workdir)
  state, history = ckpts.restore_latest(parallel.with_shardings(abstract, shardings), data_iter)
  ckpts.close()
  wte = state.params["decoder"]["wte"]["embedding"]
  flat = {jax.tree_util.keystr(k): parallel.to_host(v)
          for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  index = jax.process_index()
  np.savez(out / f"restored_{index}.npz", **flat)
  summary = {
      "process_index": index, "process_count": jax.process_count(),
      "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
      "restored_step": int(state.step), "wte_shape": list(wte.shape),
      "wte_local_columns": sum(s.data.shape[1] for s in wte.addressable_shards),
      "evaluations": history["evals"],
  }
  if mode == "--distributed":
    judge = parallel.primary_first(lambda: evaluate.get_judge(run, workdir), "judge")
    summary["judge_heldout_accuracy"] = judge.heldout_accuracy
  (out / f"summary_{index}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
  mode_arg, pid_arg, port_arg, out_arg, root_arg = sys.argv[1:]
  pathlib.Path(out_arg).mkdir(parents=True, exist_ok=True)
  _worker(mode_arg, int(pid_arg), int(port_arg), pathlib.Path(out_arg), pathlib.Path(root_arg))
