"""A built wheel holds the whole package and its data (the GPT-2 BPE files, the demo lexicon,
py.typed), and a copy installed from it, not the checkout, predicts with a trained run."""

import pathlib
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from helpers import REPO, trained_run  # the tiny run shared by the command-line tests
from helpers import compile_cache, demo_root, main_args, main_command, subprocess_env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(out), str(REPO)], check=True, capture_output=True, timeout=300)
  (path,) = out.glob("sevlm_jax-*.whl")
  return path


def test_the_wheel_holds_every_module_and_data_file(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  package = REPO / "sevlm_jax"
  for source in package.rglob("*.py"):
    assert f"sevlm_jax/{source.relative_to(package).as_posix()}" in names, source
  for data in ("_gpt2_bpe/encoder.json", "_gpt2_bpe/vocab.bpe", "_gpt2_bpe/LICENSE",
               "_artemis/symspell_frequency_dictionary_en_82_765.txt",
               "_artemis/glove.6B.100d.vocabulary.txt", "_artemis/spelling.json", "_artemis/LICENSE",
               "data/assets/demo_vad_lexicon.tsv", "py.typed"):
    assert f"sevlm_jax/{data}" in names, data
  # The served page's and the evaluation report's HTML, CSS and JS are read from the package.
  for page in ("inference/assets/page", "evaluation/assets/report"):
    for suffix in (".html", ".css", ".js"):
      assert f"sevlm_jax/{page}{suffix}" in names, page + suffix


def test_an_installed_wheel_predicts_with_a_trained_run(wheel, tmp_path, tmp_path_factory):
  workdir = trained_run(tmp_path_factory)
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  str(target), str(wheel)], check=True, capture_output=True, timeout=300)
  script = (
      "import numpy as np, sevlm_jax\n"
      f"assert sevlm_jax.__file__.startswith({str(target)!r}), sevlm_jax.__file__\n"
      "from sevlm_jax.inference.predictor import Predictor\n"
      f"p = Predictor.from_workdir({str(workdir)!r})\n"
      "(pred,) = p.predict([np.zeros((20, 30, 3), np.uint8)])\n"
      "assert pred['text'].startswith('the emotion is'), pred\n"
      "from sevlm_jax.inference import serve\n"  # its page and the report's, read from the wheel
      "from sevlm_jax.evaluation import report\n"
      "assert '__EMOTIONS__' in serve.PAGE and '$gallery' in report._PAGE.template\n"
      "print('ok')\n")
  env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu",
         "HOME": str(tmp_path)}
  out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_an_installed_wheel_trains_the_demo_config_from_outside_the_checkout(wheel, tmp_path,
                                                                              tmp_path_factory):
  """The README's `--config=configs/sevlm.py:demo`, run where there is no configs/ and the checkout
  is not importable, reads the config inside the package and trains; it is stopped (SIGTERM: a
  checkpoint, then exit 0) once it has logged two steps."""
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  str(target), str(wheel)], check=True, capture_output=True, timeout=300)
  env = {**subprocess_env(compile_cache(tmp_path_factory)), "PYTHONPATH": str(target),
         "HOME": str(tmp_path)}
  where = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                          "print(u.find_spec('sevlm_jax').origin)"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
  assert where.stdout.startswith(str(target)), where.stdout
  workdir, log = tmp_path / "run", tmp_path / "run.stderr"
  args = main_args(demo_root(tmp_path_factory), workdir, "--config.train.num_steps=100000",
                   "--config.train.log_every=1", "--config.train.eval_every=100000",
                   "--config.train.checkpoint_every=100000")
  assert args[0] == "--config=configs/sevlm.py:demo" and not (tmp_path / "configs").exists()
  with open(log, "w") as err:
    proc = subprocess.Popen(main_command(args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=err)
  try:
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and " step 2/100000 " not in log.read_text():
      time.sleep(0.2)
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  text = log.read_text()
  assert proc.returncode == 0 and " step 1/100000 loss " in text, text[-3000:]
  assert "signal 15 received: saving a checkpoint" in text, text[-3000:]
  assert (workdir / "checkpoints" / "latest").is_dir() and (workdir / "config.json").exists()
