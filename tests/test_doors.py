"""What the user can get wrong at the doors, each answered with one line: bad flags and usage of
both commands (exit status 2), paths of the wrong kind, an output folder that cannot be made
(before any work), a training batch larger than the train split; and what a crash leaves behind:
replaced folders of killed processes, an unreadable best-checkpoint metrics file, a config.json
that is not a config; and predict_each, which answers the readable images of a batch."""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax.config import migrate
from sevlm_jax.data import vad
from sevlm_jax.data import vad_table
from helpers import REPO, compile_cache, demo_root, main_args, main_command, subprocess_env, tiny_config

TRACEBACK = "Traceback (most recent call last)"


def _dead_pid() -> int:
  """The id of a process that has ended."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _one_error_line(result: subprocess.CompletedProcess) -> str:
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert TRACEBACK not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  return lines[0]


# ----------------------------------------------------------------------------- the prepare command

@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """A one-painting ArtEmis CSV, its image folder, a plain file and a folder."""
  tmp = tmp_path_factory.mktemp("raw")
  (tmp / "img" / "S").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(tmp / "img" / "S" / "a.jpg")
  (tmp / "a.csv").write_text("art_style,painting,emotion,utterance,repetition\n"
                             "S,a,awe,a very big blue sky,1\nS,a,fear,a dark and stormy sea,1\n")
  (tmp / "a_file").write_text("not a folder")
  (tmp / "a_folder").mkdir()
  return tmp


def _prepare_cases(tmp: pathlib.Path) -> dict:
  """name -> (arguments after the three paths, texts the one line must show)."""
  ok = [f"--csv={tmp / 'a.csv'}", f"--images={tmp / 'img'}", f"--out={tmp / 'out'}"]
  return {
      "bad_flag_value": ([*ok, "--image_size=abc"], ["--image_size=abc", "--helpshort"]),
      "bad_enum_value": ([*ok, "--format=v9"], ["--format=v9", "v1"]),
      "unknown_flag": ([*ok, "--no_such_flag=1"], ["no_such_flag"]),
      "missing_out": (ok[:2], ["--out is required"]),
      "split_loads": ([*ok, "--split_loads=1,2"], ["--split_loads", "train,val,test"]),
      "extra_argument": ([*ok, "extra"], ["unexpected arguments", "extra"]),
      "csv_is_a_folder": ([f"--csv={tmp / 'a_folder'}", *ok[1:]],
                          [f"annotation file {tmp / 'a_folder'} is a folder, not a file"]),
      "images_is_a_file": ([ok[0], f"--images={tmp / 'a_file'}", ok[2]],
                           [f"images folder {tmp / 'a_file'} is a file, not a folder"]),
      # Checked before the CSV is read: this CSV would fail to parse.
      "out_cannot_be_made": ([f"--csv={tmp / 'img' / 'S' / 'a.jpg'}", ok[1],
                              f"--out={tmp / 'a_file' / 'out'}"],
                             [f"output folder {tmp / 'a_file' / 'out'} cannot be created",
                              f"{tmp / 'a_file'} is a file, not a folder"]),
  }


def test_prepare_command_errors_are_one_line_and_exit_2(raw):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  started = {name: (subprocess.Popen([sys.executable, "-m", "sevlm_jax.data.prepare", *args,
                                      "--workers=0"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True), expected)
             for name, (args, expected) in _prepare_cases(raw).items()}
  for name, (proc, expected) in started.items():
    out, err = proc.communicate(timeout=120)
    line = _one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for text in expected:
      assert text in line, (name, line)
  assert not (raw / "out").exists()


def test_read_only_output_parent_is_refused_before_any_work(raw, tmp_path):
  if os.geteuid() == 0:
    pytest.skip("root writes into read-only folders")
  parent = tmp_path / "read_only"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    with pytest.raises(PermissionError, match="cannot be written to"):
      io_utils.check_can_create(parent / "out")
  finally:
    parent.chmod(0o755)


def test_paths_of_the_wrong_kind_are_named_as_such(raw):
  assert io_utils.path_problem(raw / "a.csv", "file") is None
  assert io_utils.path_problem(raw / "img", "folder") is None
  assert io_utils.path_problem(raw / "gone", "file") == "does not exist"
  with pytest.raises(IsADirectoryError, match=f"VAD lexicon {raw / 'a_folder'} is a folder, not a file"):
    vad.load_lexicon(raw / "a_folder")
  config = ml_collections.ConfigDict({"data": {"lexicon": str(raw / "a_folder"), "source": "v1"}})
  with pytest.raises(errors.ConfigError, match="is a folder, not a file"):
    vad_table.lexicon_path(config)
  io_utils.check_can_create(raw / "new" / "deeper" / "out")  # missing parents are fine
  assert not (raw / "new").exists()


# ----------------------------------------------------------------------------- the main command

def test_main_command_usage_errors_are_one_line_and_exit_2(tmp_path_factory, tmp_path):
  env = subprocess_env(compile_cache(tmp_path_factory))
  cases = {
      "predict_without_images": (["--mode=predict", f"--workdir={tmp_path}"], ["--images="]),
      "bad_mode": (["--mode=fly", f"--workdir={tmp_path}"], ["--mode=fly"]),
      "bad_port": (["--mode=serve", f"--workdir={tmp_path}", "--port=abc"], ["--port=abc"]),
      "extra_argument": (["--mode=predict", f"--workdir={tmp_path}", "stray"], ["stray"]),
  }
  started = {name: (subprocess.Popen(main_command(args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True), expected)
             for name, (args, expected) in cases.items()}
  for name, (proc, expected) in started.items():
    out, err = proc.communicate(timeout=300)
    line = _one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for text in expected:
      assert text in line, (name, line)


def test_a_batch_larger_than_the_train_split_is_one_line(tmp_path_factory, tmp_path):
  demo = demo_root(tmp_path_factory)
  args = main_args(demo, tmp_path / "w", "--config.train.batch_size=400")
  result = subprocess.run(main_command(args), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(compile_cache(tmp_path_factory)))
  assert result.returncode == 2, result.stderr[-3000:]
  (line,) = [l for l in result.stderr.splitlines() if "error" in l.lower()]
  assert TRACEBACK not in result.stderr
  assert line.startswith("error: train.batch_size=400 is larger than the train split of ")
  assert "images with at least two distinct emotions" in line
  assert "the largest batch that fits is " in line and "--config.train.batch_size=" in line


def test_check_batch_fits_names_the_largest_batch(tmp_path_factory):
  from sevlm_jax.data import sources  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training import loop  # pylint: disable=import-outside-toplevel
  root = demo_root(tmp_path_factory)
  config = tiny_config(root)
  ready = sources.resolve_ready_dir(config, str(root))
  mesh = loop.check_parallel(config)
  largest = len(pipeline.training_images(ready))
  config.train.batch_size = largest
  loop.check_batch_fits(config, ready, mesh)
  config.train.batch_size = largest + 1
  with pytest.raises(errors.ConfigError, match=f"it has {largest} images .* the largest batch "
                     f"that fits is {largest}"):
    loop.check_batch_fits(config, ready, mesh)


# ----------------------------------------------------------------------------- what crashes leave

def test_replaced_folders_of_killed_processes_are_removed(tmp_path):
  out = tmp_path / "ready"
  dead, alive = _dead_pid(), os.getpid()
  leftovers = {f".ready.old-{dead}-0a1b2c3d": False, ".ready.old-0a1b2c3d": False,  # an older name
               f".ready.incomplete-{dead}-0a1b2c3d": False,
               f".ready.old-{alive}-0a1b2c3d": True, f".ready.incomplete-{alive}-0a1b2c3d": True,
               ".other.old-0a1b2c3d": True, "ready.old-0a1b2c3d": True}
  for name in leftovers:
    (tmp_path / name).mkdir()
  tmp = io_utils.temp_dir_beside(out)
  for name, kept in leftovers.items():
    assert (tmp_path / name).exists() == kept, name
  (tmp / "new").write_text("new")
  out.mkdir()
  io_utils.replace_dir(tmp, out)
  assert (out / "new").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ready.old-") and str(alive) not in p.name]


def _params(value: float) -> dict:
  return {"decoder": {"w": np.full(30, value, np.float32)}}


def test_an_unreadable_best_metrics_file_is_rewritten_from_metrics_jsonl(tmp_path, caplog):
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  ckpts.save_best(6, _params(6), {"acc": 0.5, "bleu4": 0.1})
  ckpts.close()
  with open(tmp_path / "metrics.jsonl", "w") as f:  # as MetricsWriter logged it, a line cut last
    f.write(json.dumps({"step": 6, "split": "val", "time": 1.0, "acc": 0.5, "bleu4": 0.1}) + "\n")
    f.write('{"step": 9, "split": "val", "ac')
  (tmp_path / "checkpoints" / "best_acc" / "6" / "metrics" / "metrics").write_text("{")
  with caplog.at_level("WARNING"):
    ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  assert any("rewritten from the step's validation in metrics.jsonl" in r.getMessage()
             for r in caplog.records)
  # A worse validation does not become the best: step 6 keeps best_acc, step 12 takes best_bleu.
  assert ckpts.save_best(12, _params(12), {"acc": 0.4, "bleu4": 0.2}) == ["best_bleu"]
  ckpts.close()
  _, meta = ckpt_lib.restore_params(str(tmp_path), "best_acc")
  assert (meta["checkpoint"], meta["step"]) == ("best_acc", 6)
  assert not (tmp_path / "checkpoints" / "unreadable").exists()


def test_a_best_metrics_file_missing_from_metrics_jsonl_is_still_set_aside(tmp_path, caplog):
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path))
  ckpts.save_best(6, _params(6), {"acc": 0.5, "bleu4": 0.1})
  ckpts.close()
  (tmp_path / "checkpoints" / "best_acc" / "6" / "metrics" / "metrics").write_text("{")
  with caplog.at_level("WARNING"):
    ckpt_lib.RunCheckpoints(str(tmp_path)).close()
  assert (tmp_path / "checkpoints" / "unreadable" / "best_acc" / "6").is_dir()


@pytest.mark.parametrize("body, expected", [
    (b"{", "is not valid JSON"),
    (b"\xff\xfe{}", "is not UTF-8 text (byte 0xff at offset 0)"),
    (b'{"config_version": "x"}', "is not a config written by sevlm_jax (ValueError"),
    (b'{"model": 3}', "is not a config written by sevlm_jax"),
])
def test_a_config_json_that_is_not_a_config_is_one_line_naming_it(tmp_path, body, expected):
  from sevlm_jax.inference import model_dir  # pylint: disable=import-outside-toplevel
  (tmp_path / model_dir.CONFIG_FILE).write_bytes(body)
  (tmp_path / model_dir.PARAMS_FILE).write_bytes(b"x")
  files = {n: io_utils.sha256_file(tmp_path / n) for n in (model_dir.CONFIG_FILE, model_dir.PARAMS_FILE)}
  (tmp_path / model_dir.MANIFEST).write_text(json.dumps(
      {"format": model_dir.FORMAT, "format_version": model_dir.FORMAT_VERSION, "files": files}))
  with pytest.raises(errors.ConfigError) as e:
    model_dir.load_exported(tmp_path)  # the manifest's sha256 matches: the config itself is bad
  assert str(e.value).startswith(f"{tmp_path / model_dir.CONFIG_FILE} ") and expected in str(e.value)
  assert "\n" not in str(e.value)
  with pytest.raises(errors.ConfigError, match=expected.split(" (")[0]):
    migrate.load_json(tmp_path / model_dir.CONFIG_FILE)


# ----------------------------------------------------------------------------- predict_each

def test_predict_each_answers_the_readable_images(tmp_path_factory, tmp_path, make_random_params):
  from sevlm_jax.inference import predictor as predictor_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.models import build  # pylint: disable=import-outside-toplevel
  config = tiny_config(demo_root(tmp_path_factory), **{"eval.batch_size": 2})
  params = make_random_params(build.build_model(config).config)
  predictor = predictor_lib.Predictor(config, params, np.zeros((50261, 3), np.float32))
  good = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
  Image.fromarray(good).save(tmp_path / "good.png")
  (tmp_path / "text.png").write_text("not an image")
  images = [str(tmp_path / "good.png"), str(tmp_path / "gone.png"), str(tmp_path / "text.png"), good]
  got = predictor.predict_each(images)
  assert got[0] == got[3] == predictor.predict([good])[0]
  assert "image 1: image file" in got[1]["error"] and "does not exist" in got[1]["error"]
  assert "image 2: " in got[2]["error"] and "is not a readable image" in got[2]["error"]
  with pytest.raises(errors.InputError, match="does not exist"):  # the Python API: one bad, all fail
    predictor.predict(images)
  assert predictor.predict_each([str(tmp_path / "gone.png")]) == [
      {"error": f"image 0: image file {tmp_path / 'gone.png'} does not exist"}]
