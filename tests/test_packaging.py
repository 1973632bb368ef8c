"""A built wheel holds the whole package and its data (the GPT-2 BPE files, the demo lexicon,
py.typed), and a copy installed from it, not the checkout, predicts with a trained run."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

from helpers import REPO, trained_run  # the tiny run shared by the command-line tests


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
