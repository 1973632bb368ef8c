"""The Hugging Face Space of an export (`--mode=export --space`): the package's copy is under the
manifest, the card's front matter configures the Space, and the exported app.py, run as a Space
runs it (the folder and site-packages on the path, every module that requirements.txt does not
install hidden), answers through gradio_client and in headless Chromium with what the predictor
computes.

The browser test needs what tests/test_report_browser.py needs (its driver fixture is reused): it
skips without chromium, except under CI, where it fails.
"""

import ast
import configparser
import io
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from importlib import metadata

import numpy as np
import pytest
from PIL import Image

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import records
from sevlm_jax.inference import export as export_lib
from sevlm_jax.inference import model_dir
from sevlm_jax.inference import predictor as predictor_lib
from sevlm_jax.inference import serve
from sevlm_jax.inference import space
from helpers import REPO, compile_cache, demo_root, run_main
from test_report_browser import (  # pylint: disable=unused-import
    assert_screenshot, console_errors, driver)  # the browser tests' Chromium (a fixture) and checks

APP_START_TIMEOUT_S = 300  # JAX's import and the warm-up compile on a busy 2-core machine


@pytest.fixture(scope="module")
def space_dir(tiny_run, tmp_path_factory) -> pathlib.Path:
  """The tiny run exported through the command line with --space."""
  out = tmp_path_factory.mktemp("space") / "model"
  result = run_main(["--mode=export", f"--workdir={tiny_run}", f"--out={out}", "--space"],
                    compile_cache(tmp_path_factory), out.parent / "export")
  assert result.returncode == 0, result.stderr[-3000:]
  return out


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> pathlib.Path:
  """A demo test image, not square (the attention grid must span the whole picture)."""
  test = records.load_split(demo_root(tmp_path_factory) / "ready", "test")
  path = tmp_path_factory.mktemp("picture") / "painting.png"
  Image.fromarray(test[0]["image"]).resize((90, 60)).save(path)
  return path


def space_env(folder: pathlib.Path, home: pathlib.Path, **extra) -> dict[str, str]:
  """What a Space's process has: the folder and the installed requirements on the path (python -S:
  no .pth file runs, so the checkout's editable install of sevlm_jax is out of reach)."""
  site = os.pathsep.join(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
  return {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": f"{folder}{os.pathsep}{site}",
          "JAX_PLATFORMS": "cpu", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
          "PYTHONUNBUFFERED": "1", **extra}


# ----------------------------------------------------------------------------- the folder

def test_the_export_holds_the_space_files_under_its_manifest(space_dir):
  files = {str(p.relative_to(space_dir)) for p in space_dir.rglob("*") if p.is_file()}
  manifest = json.loads((space_dir / model_dir.MANIFEST).read_text())
  # Every file but the Space's own settings, which are free to edit.
  assert set(manifest["files"]) == files - {model_dir.MANIFEST, "app.py", "requirements.txt",
                                            "README.md"}
  assert {"app.py", "requirements.txt", "README.md", "model.safetensors"} <= files
  assert (space_dir / "app.py").read_text() == io_utils.package_text("sevlm_jax.inference",
                                                                     "space_app.py")
  # The package's own copy: every module and data file of the package, and the vendored files.
  package = REPO / "sevlm_jax"
  for source in package.rglob("*"):
    if source.is_file() and "__pycache__" not in source.parts:
      assert f"sevlm_jax/{source.relative_to(package).as_posix()}" in files, source
  for name, in_checkout in space.MAPPED_FOLDERS.items():
    for source in (REPO / in_checkout).glob("*.*"):
      assert f"sevlm_jax/{name}/{source.name}" in files, source
  assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
  # Pinned at this environment's versions.
  lines = (space_dir / "requirements.txt").read_text().splitlines()
  assert lines == [f"{name}=={metadata.version(name)}" for name in space.REQUIREMENTS]


def test_the_card_configures_the_space(space_dir):
  card = (space_dir / "README.md").read_text()
  assert card.startswith("---\n")
  header = card.split("---\n")[1]
  for line in ("sdk: gradio", "app_file: app.py", f"sdk_version: {metadata.version('gradio')}",
               f"python_version: '{sys.version_info.major}.{sys.version_info.minor}'"):
    assert line in header.splitlines(), line
  assert "# SEVLM model (sevlm_jax export)" in card  # the model card follows


def test_space_keys_join_an_existing_front_matter():
  card = "---\nlicense: apache-2.0\ntags:\n- sevlm\n- art\n---\n# A model\n\nIts text.\n"
  out = space.with_space_keys(card)
  header, text = out.split("---\n")[1:]
  assert text == "# A model\n\nIts text.\n"
  assert header.startswith("license: apache-2.0\ntags:\n- sevlm\n- art\n")
  assert "sdk: gradio" in header and "app_file: app.py" in header
  assert space.with_space_keys(out) == out  # adding them again changes nothing


def test_the_mapped_folders_are_those_the_wheel_ships():
  config = configparser.ConfigParser()
  config.read(REPO / "setup.cfg")
  mapped = dict(tuple(part.strip() for part in line.split("="))
                for line in config["options"]["package_dir"].splitlines() if line.strip())
  assert mapped == {f"sevlm_jax.{name}": path for name, path in space.MAPPED_FOLDERS.items()}


def test_a_changed_copy_fails_to_load_and_an_edited_app_does_not(space_dir, tmp_path):
  copy = tmp_path / "model"
  shutil.copytree(space_dir, copy)
  for name in ("app.py", "requirements.txt", "README.md"):  # README.md: the Space's title etc.
    with open(copy / name, "a") as f:
      f.write("\n# edited\n")
  model_dir.load_exported(copy)
  with open(copy / "sevlm_jax" / "vocab.py", "a") as f:
    f.write("# changed\n")
  with pytest.raises(errors.CheckpointError, match="vocab.py"):
    model_dir.load_exported(copy)


def test_without_gradio_nothing_is_written(tiny_run, tmp_path, monkeypatch):
  real = metadata.version

  def version(name):
    if name == "gradio":
      raise metadata.PackageNotFoundError(name)
    return real(name)

  monkeypatch.setattr(space.metadata, "version", version)
  out = tmp_path / "model"
  with pytest.raises(errors.ConfigError, match=r"gradio.*sevlm_jax\[space\]"):
    export_lib.export_model(str(tiny_run), str(out), space=True)
  assert list(tmp_path.iterdir()) == []  # no folder, no temporary one beside it


def test_attention_overlay_spans_the_picture():
  gray = Image.new("RGB", (40, 20), (100, 100, 100))
  shown = space.attention_overlay(gray, [[0.0, 1.0], [0.0, 0.5]])
  assert shown.shape == (20, 40, 3) and shown.dtype == np.uint8
  np.testing.assert_array_equal(shown[:, :20], 100)  # patches with no attention: untouched
  peak = np.round(100 * 0.25 + np.asarray(space.ATTENTION_RGB) * 0.75)  # the peak: 0.75 opaque
  np.testing.assert_array_equal(shown[:10, 20:], np.broadcast_to(peak, (10, 20, 3)))
  half = np.round(100 * 0.625 + np.asarray(space.ATTENTION_RGB) * 0.375)
  np.testing.assert_array_equal(shown[10:, 20:], np.broadcast_to(half, (10, 20, 3)))
  big = space.attention_overlay(Image.new("RGB", (2000, 1000)), np.zeros((4, 4)))
  assert big.shape == (space.MAX_SHOWN_SIDE // 2, space.MAX_SHOWN_SIDE, 3)


def test_no_module_of_the_package_imports_gradio():
  """gradio is the [space] extra: only the app's template (an asset, never imported) uses it."""
  for path in (REPO / "sevlm_jax").rglob("*.py"):
    if "assets" in path.parts:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not [n for n in names if n.split(".")[0] in ("gradio", "gradio_client")], path


def test_the_vad_chart_keeps_the_tokens_in_order():
  answer = {"tokens": [f" w{k}" for k in range(12)], "vad": np.ones((12, 3))}
  rows = space.vad_rows(answer)
  labels = list(dict.fromkeys(rows["token"]))
  assert labels[0] == " 1 w0" and labels[-1] == "12 w11"
  assert sorted(labels) == labels  # the chart sorts its x labels as text
  assert rows["dimension"][:3] == list(space.VAD_DIMENSIONS) and len(rows["value"]) == 36


def canonical(name: str) -> str:
  return name.lower().replace("_", "-").replace(".", "-")


def dependency_closure(names) -> set[str]:
  """The distributions that installing `names` installs (as this environment resolves them)."""
  from packaging.requirements import Requirement  # pylint: disable=import-outside-toplevel
  seen: set[str] = set()
  todo = [(name, frozenset()) for name in names]
  while todo:
    name, extras = todo.pop()
    if canonical(name) in seen and not extras:
      continue
    seen.add(canonical(name))
    for text in metadata.requires(name) or []:
      requirement = Requirement(text)
      marker = requirement.marker
      if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
        todo.append((requirement.name, frozenset(requirement.extras)))
  return seen


def hidden_modules(requirements_txt: pathlib.Path) -> list[str]:
  """Top-level modules installed here by a distribution that requirements.txt does not install
  (the test environment holds far more than a Space would)."""
  wanted = dependency_closure(line.split("==")[0] for line in requirements_txt.read_text().split())
  return sorted(module for module, owners in metadata.packages_distributions().items()
                if module != "sevlm_jax" and not {canonical(d) for d in owners} & wanted)


# Runs app.py as `python app.py` does, with the modules of hidden_modules() made impossible to
# import: the app must start and answer with what requirements.txt installs. It first prints where
# sevlm_jax comes from.
SPACE_LAUNCHER = """
import importlib.abc, runpy, sys
HIDDEN = set({hidden!r})
class Hidden(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in HIDDEN:
      raise ModuleNotFoundError(f"{{name}} is not installed by requirements.txt", name=name)
    return None
sys.meta_path.insert(0, Hidden())
import sevlm_jax
print("sevlm_jax from", sevlm_jax.__file__, flush=True)
runpy.run_path("app.py", run_name="__main__")
"""


# ----------------------------------------------------------------------------- the running app

def free_port() -> int:
  with socket.socket() as s:
    s.bind((serve.HOST, 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(space_dir, tmp_path_factory):
  """app.py run as a Space runs it (SPACE_LAUNCHER) in a copy of the exported folder (running it
  writes bytecode there), on a free port of 127.0.0.1, until the module ends."""
  home = tmp_path_factory.mktemp("space_home")
  folder = shutil.copytree(space_dir, home / "space")
  port = free_port()
  env = space_env(folder, home, GRADIO_SERVER_NAME=serve.HOST, GRADIO_SERVER_PORT=str(port),
                  GRADIO_TEMP_DIR=str(home / "gradio"),
                  JAX_COMPILATION_CACHE_DIR=str(compile_cache(tmp_path_factory)))
  log = home / "app.log"
  with open(log, "w") as f:
    launcher = SPACE_LAUNCHER.format(hidden=hidden_modules(folder / "requirements.txt"))
    proc = subprocess.Popen([sys.executable, "-S", "-c", launcher], cwd=folder, env=env,
                            stdout=f, stderr=subprocess.STDOUT)
  url = f"http://{serve.HOST}:{port}/"
  try:
    deadline = time.monotonic() + APP_START_TIMEOUT_S
    while True:
      if proc.poll() is not None:
        pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
      try:
        with urllib.request.urlopen(url, timeout=5) as response:
          if response.status == 200:
            break
      except OSError:
        pass
      if time.monotonic() > deadline:
        pytest.fail(f"app.py did not answer within {APP_START_TIMEOUT_S} s:\n"
                    f"{log.read_text()[-3000:]}")
      time.sleep(1)
    assert f"sevlm_jax from {folder / 'sevlm_jax'}" in log.read_text()  # the folder's own copy
    yield url
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


@pytest.fixture(scope="module")
def client(app_url, tmp_path_factory):
  from gradio_client import Client  # pylint: disable=import-outside-toplevel
  return Client(app_url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def expected(space_dir, picture):
  """What the page would answer for the picture, own choice and fear, from the exported folder."""
  predictor = predictor_lib.Predictor.from_pretrained(str(space_dir), batch_size=1)
  image = Image.open(picture).convert("RGB")
  return {emotion: serve.prediction_json(predictor, image, emotion) for emotion in (None, "fear")}


def test_the_app_answers_through_gradio_client(client, picture, expected, record_property):
  from gradio_client import handle_file  # pylint: disable=import-outside-toplevel
  answers = {}
  for emotion, choice in ((None, "(the model's own choice)"), ("fear", "fear")):
    label, said, because, words, attention, vad = client.predict(
        handle_file(str(picture)), choice, api_name="/analyse")
    want = expected[emotion]
    # The nine probabilities, summing to 1, as the predictor gives them.
    scores = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert sorted(scores) == sorted(vocab.EMOTIONS)
    assert abs(sum(scores.values()) - 1) < 1e-5
    np.testing.assert_allclose([scores[e] for e in vocab.EMOTIONS], want["probabilities"],
                               atol=1e-6)
    assert label["label"] == max(scores, key=scores.get)
    assert (said, because) == (want["emotion"] or "", want["explanation"] or "")
    # One choice per explanation word; the first word's attention over the whole picture.
    assert [c[0] for c in words["choices"]] == [f"{k + 1}. {w}"
                                                for k, w in enumerate(want["words"])]
    if want["words"]:
      shown = np.asarray(Image.open(attention).convert("RGB"))
      assert shown.shape == (60, 90, 3)
      np.testing.assert_array_equal(shown, space.attention_overlay(
          Image.open(picture), want["attention"][0]))
    # The VAD chart: three values per explanation token, the VAD head's.
    rows = [dict(zip(vad["columns"], row)) for row in vad["data"]]
    assert len(rows) == 3 * len(want["tokens"])
    got = np.asarray([r["value"] for r in rows]).reshape(-1, 3)
    np.testing.assert_allclose(got, want["vad"], atol=1e-6)
    assert [r["dimension"] for r in rows[:3]] == list(space.VAD_DIMENSIONS)
    answers[choice] = {"emotion": said, "explanation": because, "top": label["label"],
                       "probabilities": {k: round(v, 4) for k, v in scores.items()},
                       "words": len(want["words"]), "vad_first": got[0].round(4).tolist()}
  # Explain-as: the forced emotion is the one explained.
  assert answers["fear"]["emotion"] == "fear" and answers["fear"]["explanation"]
  # Another word's attention, from the answer the session keeps.
  last = len(expected["fear"]["words"]) - 1
  other = client.predict(handle_file(str(picture)), last, api_name="/attention")
  np.testing.assert_array_equal(
      np.asarray(Image.open(other).convert("RGB")),
      space.attention_overlay(Image.open(picture), expected["fear"]["attention"][last]))
  record_property("space_answers", json.dumps(answers))
  print("space app answers:", json.dumps(answers))


def test_the_app_refuses_a_file_that_is_not_an_image(client, tmp_path):
  from gradio_client import handle_file  # pylint: disable=import-outside-toplevel
  notes = tmp_path / "notes.png"
  notes.write_text("not a picture")
  with pytest.raises(Exception) as refused:  # gradio_client's AppError, with the app's message
    client.predict(handle_file(str(notes)), "fear", api_name="/analyse")
  assert "image" in str(refused.value).lower()


def test_clicking_through_the_app_in_a_browser(driver, app_url, picture, expected, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=import-outside-toplevel

  def value(elem_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input"
                               ).get_attribute("value")

  def choose(elem_id: str, label: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
    driver.find_element(By.CSS_SELECTOR, f'#{elem_id} [role=option][aria-label="{label}"]').click()

  def attention_src() -> str:
    found = driver.find_elements(By.CSS_SELECTOR, "#attention img")
    return found[0].get_attribute("src") if found else ""

  def shown_attention() -> np.ndarray | None:
    """The pixels of the attention image the page shows (fetched from the app)."""
    if not attention_src():
      return None
    with urllib.request.urlopen(attention_src(), timeout=10) as response:
      return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))

  driver.get_log("browser")
  driver.get(app_url)
  upload = "#picture input[type=file]"
  WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, upload))
  driver.find_element(By.CSS_SELECTOR, upload).send_keys(str(picture))
  own = expected[None]
  WebDriverWait(driver, 120).until(lambda d: value("explanation") == (own["explanation"] or "")
                                   and value("emotion") == (own["emotion"] or "")
                                   and (attention_src() or not own["words"]))
  # The nine emotions' bars, and the chart's three lines (valence, arousal, dominance).
  WebDriverWait(driver, 30).until(lambda d: all(
      name in d.find_element(By.ID, "probabilities").text for name in vocab.EMOTIONS))
  WebDriverWait(driver, 30).until(
      lambda d: len(d.find_elements(By.CSS_SELECTOR, "#vad svg .mark-line path")) == 3)

  # Explain as fear: the app asks again.
  choose("explain-as", "fear")
  fear = expected["fear"]
  WebDriverWait(driver, 120).until(lambda d: value("emotion") == "fear"
                                   and value("explanation") == fear["explanation"])
  # Another word: the picture under its attention replaces the first word's.
  assert len(fear["words"]) > 1, fear
  last = len(fear["words"]) - 1
  choose("word", f"{last + 1}. {fear['words'][last]}")
  want = space.attention_overlay(Image.open(picture), fear["attention"][last])
  WebDriverWait(driver, 60).until(lambda d: np.array_equal(shown_attention(), want))
  size = ("var im = document.querySelector('#attention img');"
          "return [im.naturalWidth, im.naturalHeight]")
  WebDriverWait(driver, 10).until(lambda d: d.execute_script(size) == [90, 60])  # drawn, full size
  assert_screenshot(driver, tmp_path / "space.png")
  assert console_errors(driver) == []
