"""What the test modules share, besides conftest.py's fixtures: TINY and `tiny_config`
(configs/sevlm.py:demo shrunk to seconds), `main_args` (the same as command-line flags),
`Background` / `run_main` (the command line in a subprocess, with a compilation cache shared by the
session), `demo_root` (the demo data set, built once per session) and `trained_run` (one finished
tiny run per session, trained through the command line), and `Stepper` (a jitted train step of the
tiny model).
"""

import atexit
import contextlib
import fcntl
import importlib.util
import os
import pathlib
import resource
import signal
import subprocess
import sys

import jax
import ml_collections
import pytest
from absl import flags

from sevlm_jax.training import optim as optim_lib
from sevlm_jax.training import step as step_lib
from sevlm_jax.data import sources
from sevlm_jax.models import build

flags.FLAGS.mark_as_parsed()  # grain reads absl flags

REPO = pathlib.Path(__file__).resolve().parents[1]

# configs/sevlm.py:demo shrunk so that a whole run (train, validate, evaluate) takes seconds once
# compiled: one layer per tower, narrow, and no dropout (its random bits dominate XLA's compile
# time).
TINY = {
    "data.demo_num_images": 120,  # 101 / 7 / 12 images in train / val / test
    "model.vision.width": 64,
    "model.vision.mlp_dim": 128,
    "model.vision.layers": 1,
    "model.decoder.width": 64,
    "model.decoder.mlp_dim": 128,
    "model.decoder.layers": 1,
    "model.decoder.dropout": 0.0,
    "model.vad.layers": 1,
    "model.vad.dropout": 0.0,
    "model.contrastive.layers": 1,
    "train.num_steps": 12,
    "train.batch_size": 4,
    "train.log_every": 4,
    "train.eval_every": 6,
    "train.checkpoint_every": 3,
    "train.eval_max_images": 8,
    "eval.batch_size": 8,
    "eval.max_new_tokens": 6,
    "eval.judge_max_train": 64,
    "judge.num_epochs": 1,
    "demo_blind_baseline": False,
}


def load_config(arg: str = "demo") -> ml_collections.ConfigDict:
  """configs/sevlm.py:<arg>, loaded by path (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location("sevlm_test_config", REPO / "configs" / "sevlm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_config(demo_root, **overrides) -> ml_collections.ConfigDict:
  """The tiny demo config reading the shared demo data set; overrides as {'train.num_steps': 3}."""
  config = load_config("demo")
  for key, value in {**TINY, "data.ready_dir": str(demo_root), **overrides}.items():
    *parents, name = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    assert name in node, f"test config override names no field: {key}"
    node[name] = value
  return config


def main_args(demo_root, workdir, *extra) -> list[str]:
  """`python -m sevlm_jax.main` arguments that train the tiny config in workdir."""
  args = ["--config=configs/sevlm.py:demo", f"--workdir={workdir}",
          f"--config.data.ready_dir={demo_root}"]
  args += [f"--config.{k}={v}" for k, v in TINY.items()]
  return args + list(extra)


def subprocess_env(cache_dir) -> dict[str, str]:
  # A compilation cache shared by this session's subprocesses: each pays JAX's start-up, but
  # compiles a tiny-run computation only once. LLVM without optimisation halves XLA's compile
  # time; the tiny runs hardly notice the slower code, and all of them use the same setting.
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", XLA_FLAGS=xla_flags)


def main_command(args) -> list[str]:
  return [sys.executable, "-m", "sevlm_jax.main", *map(str, args)]


class Background:
  """`python -m sevlm_jax.main ARGS` started now; its output goes to files, so no pipe fills up.
  file_size_limit: bytes past which its writes fail, as on a full disk."""

  def __init__(self, args, cache_dir, log_prefix, file_size_limit: int | None = None):
    self.args = list(map(str, args))
    self.stdout_path = pathlib.Path(f"{log_prefix}.stdout")
    self.stderr_path = pathlib.Path(f"{log_prefix}.stderr")
    command = main_command(args)
    if file_size_limit is not None:
      command = _with_file_size_limit(command, file_size_limit)
    with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
      self.proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(cache_dir),
                                   stdout=out, stderr=err)
    _RUNNING.add(self.proc)

  def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
      self.proc.wait(timeout=timeout)
    finally:
      self.kill()
    return subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                       self.stdout_path.read_text(), self.stderr_path.read_text())

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    _RUNNING.discard(self.proc)


_RUNNING: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers():  # e.g. the shared run's training when -x stopped the session early
  for proc in list(_RUNNING):
    if proc.poll() is None:
      proc.kill()


def run_main(args, cache_dir, log_prefix, timeout: float = 300) -> subprocess.CompletedProcess:
  return Background(args, cache_dir, log_prefix).result(timeout)


def shared_dir(tmp_path_factory, name: str) -> pathlib.Path:
  """A directory shared by every test module of the session, and by its xdist workers."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the workers' basetemps are siblings in the session's directory
  path = base / "sevlm_shared" / name
  path.mkdir(parents=True, exist_ok=True)
  return path


@contextlib.contextmanager
def exclusive(lock_path):
  """Held by one process at a time (another xdist worker waits, then reuses the result)."""
  with open(lock_path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def compile_cache(tmp_path_factory) -> pathlib.Path:
  return shared_dir(tmp_path_factory, "jax_cache")


def demo_root(tmp_path_factory) -> pathlib.Path:
  root = shared_dir(tmp_path_factory, "demo_data")
  with exclusive(root.parent / "demo_data.lock"):
    sources.ensure_demo_dataset(root, seed=0, num_images=TINY["data.demo_num_images"], image_size=32)
  return root


# The shared tiny run: a workdir trained once per session through the command line. Its files
# beside the workdir: .lock (held while it trains), .done or .failed (with the error), and the
# command's output in .log.stdout and .log.stderr.
_TRAINING = {}  # workdir -> (Background, held lock file), while this process trains it


def _run_files(tmp_path_factory):
  workdir = shared_dir(tmp_path_factory, "trained_run")
  return workdir, {k: workdir.parent / f"trained_run.{k}" for k in ("lock", "done", "failed", "log")}


def start_trained_run(tmp_path_factory) -> None:
  """Starts training the shared tiny run in the background unless it is trained or training."""
  workdir, f = _run_files(tmp_path_factory)
  if workdir in _TRAINING or f["done"].exists() or f["failed"].exists():
    return
  lock = open(f["lock"], "w")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:  # another xdist worker trains it
    lock.close()
    return
  if f["done"].exists() or f["failed"].exists():
    lock.close()
    return
  args = main_args(demo_root(tmp_path_factory), workdir)
  _TRAINING[workdir] = (Background(args, compile_cache(tmp_path_factory), f["log"]), lock)


def _finish_training(workdir, f) -> None:
  background, lock = _TRAINING.pop(workdir)
  try:
    result = background.result(timeout=900)
    if result.returncode == 0:
      f["done"].write_text("ok")
    else:
      f["failed"].write_text(f"exit code {result.returncode}\n{result.stderr[-5000:]}")
  finally:
    lock.close()  # releases the lock


def trained_run(tmp_path_factory) -> pathlib.Path:
  """The workdir of a finished tiny run (train, validation, evaluation), trained once per session."""
  workdir, f = _run_files(tmp_path_factory)
  start_trained_run(tmp_path_factory)
  if workdir in _TRAINING:
    _finish_training(workdir, f)
  while not (f["done"].exists() or f["failed"].exists()):
    with exclusive(f["lock"]):  # waits for another worker's training to end
      pass
    start_trained_run(tmp_path_factory)  # that worker died without a result: train it here
    if workdir in _TRAINING:
      _finish_training(workdir, f)
  if f["failed"].exists():
    pytest.fail(f"the shared tiny training run failed: {f['failed'].read_text()}")
  return workdir


def end_trained_run(tmp_path_factory, kill: bool = False) -> None:
  """If this process trains the shared run: waits for it and records its result for the other
  modules, or (kill) stops it, as when the session stops early."""
  workdir, f = _run_files(tmp_path_factory)
  if workdir not in _TRAINING:
    return
  if kill:
    background, lock = _TRAINING.pop(workdir)
    background.kill()
    lock.close()
  else:
    _finish_training(workdir, f)


def _with_file_size_limit(command: list[str], nbytes: int) -> list[str]:
  """`command` under file_size_limit's limit, set by a small Python that then execs the command
  (the limit and the ignored signal carry over; a preexec_fn would fork this multithreaded process)."""
  code = ("import os, resource, signal, sys\n"
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
          f"resource.setrlimit(resource.RLIMIT_FSIZE, ({nbytes}, hard))\n"
          "os.execv(sys.argv[1], sys.argv[1:])")
  return [sys.executable, "-c", code, *command]


@contextlib.contextmanager
def file_size_limit(nbytes: int):
  """In this process, for the block, writes past nbytes fail with EFBIG ('File too large') as
  writes to a full disk fail with ENOSPC: works for root too, unlike a read-only directory."""
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
  previous = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, previous[1]))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, previous)
    signal.signal(signal.SIGXFSZ, handler)


def truncate_array_files(item_dir) -> None:
  """Cuts every array data file of an Orbax checkpoint item (its OCDBT `d/` folders) in half."""
  files = [p for p in pathlib.Path(item_dir).rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files, f"no array data under {item_dir}"
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)


class Stepper:
  """A jitted train step of the tiny model with its initial state (compiled once per variant)."""

  def __init__(self, root, make_random_params, **overrides):
    # No warm-up, and a long schedule, so that the first steps move the parameters.
    self.config = tiny_config(root, **{"optim.warmup_steps": 0, **overrides})
    self.model = build.build_model(self.config)
    self.params = make_random_params(self.model.config)
    train_vision = self.config.optim.train_vision
    trainable, _ = optim_lib.split_params(self.params, train_vision)
    self.tx = optim_lib.create_optimizer(self.config.optim, trainable, total_steps=1000)
    self.state = step_lib.init_train_state(self.params, self.tx, train_vision)
    # Unoptimised LLVM code compiles in half the time; a few steps of the tiny model run fine.
    self.step = jax.jit(step_lib.make_train_step(self.model, self.config, self.tx),
                        compiler_options={"xla_backend_optimization_level": 0})

  def run(self, state, batch, vad_table, n: int):
    losses = []
    for _ in range(n):
      state, metrics = self.step(state, batch, vad_table, jax.random.PRNGKey(1))
      losses.append(float(metrics["loss"]))
    return state, losses


def prepare_one_style(tmp: pathlib.Path, rows, text_preprocessing: str) -> pathlib.Path:
  """A ready data set (everything in train) from (painting, emotion, utterance, repetition) rows
  of one art style, each painting an 8x8 black JPEG: for scoring tests that choose every
  annotation."""
  import csv  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import prepare  # pylint: disable=import-outside-toplevel
  (tmp / "img" / "S").mkdir(parents=True)
  with open(tmp / "a.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
    for painting, emotion, utterance, repetition in rows:
      if not (tmp / "img" / "S" / f"{painting}.jpg").exists():
        Image.new("RGB", (8, 8)).save(tmp / "img" / "S" / f"{painting}.jpg")
      writer.writerow(["S", painting, emotion, utterance, repetition])
  out, _ = prepare.prepare_ready(tmp / "a.csv", tmp / "img", tmp / "ready", image_size=8, workers=0,
                                 split_loads=(1.0, 0.0, 0.0), text_preprocessing=text_preprocessing,
                                 progress=False, log=lambda *a: None)
  return out


def random_emotion_lists(max_len: int, count: int = 3000, seed: int = 0):
  """(emotion indices of an image's annotations, its histogram): `count` random images of 1 to
  max_len annotations over four emotions (ties, halves and majorities all occur), for checking a
  dominant rule against its reference copy."""
  import random  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import dominant  # pylint: disable=import-outside-toplevel
  rng = random.Random(seed)
  for _ in range(count):
    emotions = [rng.choice((0, 1, 6, 7)) for _ in range(rng.randint(1, max_len))]
    yield emotions, dominant.histogram_from_counts(np.bincount(emotions, minlength=9))
