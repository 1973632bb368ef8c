"""The command line: predict and evaluate a saved tiny run, and clear errors for bad invocations.

Every command of this module is started at once by the `commands` fixture (each pays JAX's
start-up, mostly on one core) and the tests read their results.
"""

import json
import pathlib
import shutil

import pytest
from PIL import Image

from sevlm_jax.data import records
from sevlm_jax.data import vad
from helpers import Background, compile_cache, demo_root, main_args, truncate_array_files

CAPTION_KEYS = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def split_records(tmp_path_factory):
  return records.load_split(demo_root(tmp_path_factory) / "ready", "test")


def _error_cases(demo, run, tmp):
  """name -> (arguments, texts the error message must show)."""
  tiny = lambda *extra: main_args(demo, tmp / "w_tiny", *extra)
  latin1 = tmp / "lexicon_latin1.txt"
  latin1.write_bytes("caf\xe9\t0.5\t0.5\t0.5\n".encode("latin-1"))
  (tmp / "a_file").write_text("not a folder")
  return {
      "unknown_variant": (["--config=configs/sevlm.py:demo,no_such_variant", f"--workdir={tmp / 'w'}"],
                          ["no_such_variant", "demo", "artemis_v1"]),
      "unknown_field": (tiny("--config.train.no_such_field=3"), ["no_such_field"]),
      "image_size_mismatch": (tiny("--config.data.image_size=64"),
                              ["model.vision.image_size=32", "data.image_size=64"]),
      "artemis_data_missing": (
          ["--config=configs/sevlm.py:artemis_v1", f"--workdir={tmp / 'w_artemis'}"],
          ["--config.data.csv", "--config.data.images", "configs/sevlm.py:demo"]),
      "predict_not_a_run": (["--mode=predict", f"--workdir={tmp / 'empty'}", "--images=a.png"],
                            [str(tmp / "empty" / "config.json"), "not a trained SEVLM run"]),
      "predict_missing_image": (["--mode=predict", f"--workdir={run}", f"--images={tmp / 'gone.png'}"],
                                [str(tmp / "gone.png"), "does not exist"]),
      "config_file_missing": (["--config=configs/no_such_config.py", f"--workdir={tmp / 'w'}"],
                              ["no file configs/no_such_config.py here", "the packaged configs: "
                               "configs/emotion_classifier.py, configs/sevlm.py"]),
      "unknown_field_suggestion": (tiny("--config.train.batchsize=3"),
                                   ["no field 'batchsize'", "did you mean 'batch_size'?"]),
      "predict_unknown_emotion": (["--mode=predict", f"--workdir={run}", "--images=a.png",
                                   "--emotion=joy"], ["'joy' is not one of the nine", "amusement"]),
      "checkpoint_not_a_kind": (["--mode=predict", f"--workdir={run}", "--images=a.png",
                                 "--checkpoint=best"], ["--checkpoint=best", "best_acc"]),
      "evaluate_without_checkpoint": (main_args(demo, tmp / "w_eval", "--mode=evaluate"),
                                      ["no checkpoint in", str(tmp / "w_eval"), "train first"]),
      "bad_lexicon": (tiny(f"--config.data.lexicon={latin1}"), [str(latin1), "not UTF-8"]),
      "pretrained_missing": (tiny("--config.pretrained.gpt2=/no/such/gpt2"),
                             ["pretrained.gpt2='/no/such/gpt2'", "does not exist"]),
      "workdir_not_writable": (main_args(demo, tmp / "a_file" / "w"),
                               [str(tmp / "a_file" / "w"), "cannot be written to"]),
      "prepared_data_of_another_size": (
          ["--config=configs/sevlm.py:demo", f"--workdir={tmp / 'w_size'}",
           "--config.data.source=ready", f"--config.data.ready_dir={demo / 'ready'}",
           f"--config.data.lexicon={vad.DEMO_LEXICON_PATH}",
           "--config.data.text_preprocessing=raw",  # the demo's text, as its meta.json records
           "--config.data.image_size=64", "--config.model.vision.image_size=64"],
          ["holds 32x32 images", "data.image_size=64"]),
      "predict_nothing_readable": (
          ["--mode=predict", f"--workdir={tmp / 'unreadable'}", "--images=a.png"],
          [f"no readable checkpoint under {tmp / 'unreadable' / 'checkpoints'}: best_acc step",
           "best_bleu step", "latest step", "train again"]),
  }


def _copy_with_unreadable(run, workdir, kinds) -> None:
  """A copy of the run whose checkpoints of these kinds have their array files cut in half."""
  shutil.copytree(run, workdir, ignore=shutil.ignore_patterns("data", "features", "report*"))
  for kind in kinds:
    for step in (p for p in (workdir / "checkpoints" / kind).iterdir() if p.name.isdigit()):
      truncate_array_files(step / ("state" if kind == "latest" else "params"))


@pytest.fixture(scope="module")
def commands(tiny_run, split_records, tmp_path_factory):
  """Starts every command of this module: name -> (Background, what the test needs to check it)."""
  cache, demo = compile_cache(tmp_path_factory), demo_root(tmp_path_factory)
  tmp = tmp_path_factory.mktemp("main")
  started = {}

  # predict: two test-split images saved losslessly, one with a space in its name.
  paths = [tmp / "painting 0.png", tmp / "painting_1.png"]
  for i, path in enumerate(paths):
    Image.fromarray(split_records[i]["image"]).save(path)
  args = ["--mode=predict", f"--workdir={tiny_run}", "--images=" + ",".join(map(str, paths))]
  started["predict"] = (Background(args, cache, tmp / "predict"), paths)

  # predict with a missing and an unreadable image between the two good ones.
  (tmp / "text.png").write_text("not an image")
  mixed = [paths[0], tmp / "gone.png", tmp / "text.png", paths[1]]
  args = ["--mode=predict", f"--workdir={tiny_run}", "--images=" + ",".join(map(str, mixed))]
  started["predict_some_unreadable"] = (Background(args, cache, tmp / "predict_mixed"), mixed)

  # evaluate: a copy of the run without its evaluation files.
  workdir = tmp / "evaluated"
  shutil.copytree(tiny_run, workdir,
                  ignore=shutil.ignore_patterns("metrics_test.json", "predictions_test.json"))
  args = main_args(demo, workdir, "--mode=evaluate", "--checkpoint=latest")
  started["evaluate"] = (Background(args, cache, tmp / "evaluate"), workdir)

  # predict when best_acc is unreadable: best_bleu instead, with a warning.
  _copy_with_unreadable(tiny_run, tmp / "best_acc_unreadable", ["best_acc"])
  args = ["--mode=predict", f"--workdir={tmp / 'best_acc_unreadable'}",
          "--images=" + ",".join(map(str, paths))]
  started["predict_best_acc_unreadable"] = (Background(args, cache, tmp / "predict_unreadable"), paths)

  # train on a disk that fills up (writes fail past 4 MB: a checkpoint's word embeddings are 13 MB).
  args = main_args(demo, tmp / "disk_full")
  limited = Background(args, cache, tmp / "train_disk_full", file_size_limit=4 << 20)
  started["train_disk_full"] = (limited, tmp / "disk_full")

  (tmp / "empty").mkdir()
  _copy_with_unreadable(tiny_run, tmp / "unreadable", ["best_acc", "best_bleu", "latest"])
  for name, (args, expected) in _error_cases(demo, tiny_run, tmp).items():
    started[name] = (Background(args, cache, tmp / name), expected)
  yield started
  for background, _ in started.values():
    background.kill()


def test_predict_prints_one_json_line_per_image(commands, tiny_run):
  """Test-split images as PNG files: the command line predicts what `evaluate` wrote for them."""
  background, paths = commands["predict"]
  result = background.result()
  assert result.returncode == 0, result.stderr[-5000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == len(paths), result.stdout
  evaluated = {p["image_index"]: p for p in json.loads((tiny_run / "predictions_test.json").read_text())}
  for i, (line, path) in enumerate(zip(lines, paths)):
    pred = json.loads(line)
    assert set(pred) == {"image", "emotion", "explanation", "text"}
    assert pred["image"] == str(path)
    assert pred["text"] == evaluated[i]["text"]


def test_predict_answers_the_readable_images_and_names_the_others(commands):
  """A missing and an unreadable image among good ones: a JSON line for each good one, one error
  line each for the others (stdout holds only results), and exit status 2."""
  background, mixed = commands["predict_some_unreadable"]
  result = background.result()
  assert result.returncode == 2, result.stderr[-5000:]
  assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(mixed[0]), str(mixed[3])]
  errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
  assert len(errors) == 2, result.stderr[-3000:]
  assert errors[0] == f"error: image 1: image file {mixed[1]} does not exist"
  assert errors[1].startswith(f"error: image 2: {mixed[2]} is not a readable image ("), errors[1]
  assert TRACEBACK not in result.stderr


def test_predict_falls_back_from_an_unreadable_best_checkpoint(commands):
  background, paths = commands["predict_best_acc_unreadable"]
  result = background.result()
  assert result.returncode == 0, result.stderr[-5000:]
  printed = [json.loads(line)["image"] for line in result.stdout.strip().splitlines()]
  assert printed == list(map(str, paths))
  [warning] = [line for line in result.stderr.splitlines() if "unreadable checkpoint" in line]
  assert "best_acc step" in warning and "using best_bleu step" in warning, warning
  assert TRACEBACK not in result.stderr, result.stderr[-3000:]


def test_a_full_disk_stops_training_with_one_line(commands):
  """A checkpoint that cannot be written: exit status 2 and one line naming the directory and the
  cause, not a traceback (nor hundreds of lines of abandoned writes)."""
  background, workdir = commands["train_disk_full"]
  result = background.result()
  assert result.returncode == 2, result.stderr[-5000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert f"cannot save a checkpoint in {workdir / 'checkpoints'}" in errors[0], errors[0]
  assert "File too large" in errors[0]
  assert TRACEBACK not in result.stderr, result.stderr[-3000:]
  assert "Event loop is closed" not in result.stderr, result.stderr[-3000:]
  assert len(result.stderr.splitlines()) < 30, result.stderr[-5000:]
  # What was being written is no checkpoint.
  latest = workdir / "checkpoints" / "latest"
  assert not [p for p in latest.iterdir() if p.name.isdigit()]


def test_evaluate_writes_metrics_and_predictions(commands, split_records):
  background, workdir = commands["evaluate"]
  result = background.result()
  assert result.returncode == 0, result.stderr[-5000:]

  metrics = json.loads((workdir / "metrics_test.json").read_text())
  for key in ("ACC", "EA", "EA_judge_heldout_accuracy", "Unique", "captions", "captions_filtered",
              "per_emotion_accuracy", "confusion_matrix", "emotions", "checkpoint"):
    assert key in metrics, key
  for key in ("ACC", "EA", "EA_judge_heldout_accuracy", "Unique"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert CAPTION_KEYS <= set(metrics["captions"])
  assert set(metrics["per_emotion_accuracy"]) == set(metrics["emotions"])
  assert len(metrics["emotions"]) == 9 and len(metrics["confusion_matrix"]) == 9
  assert metrics["checkpoint"] == {"kind": "latest", "step": 12}
  assert metrics["num_images"] == len(split_records)

  predictions = json.loads((workdir / "predictions_test.json").read_text())
  assert sorted(p["image_index"] for p in predictions) == list(range(len(split_records)))
  for p in predictions:
    assert {"image_index", "image_id", "text", "emotion", "explanation", "dominant_emotion",
            "judge_emotion", "references"} <= set(p)
    assert p["references"] and all(isinstance(r, str) for r in p["references"])


@pytest.mark.parametrize("name", [
    "unknown_variant",
    "unknown_field",
    "image_size_mismatch",
    "artemis_data_missing",
    "predict_not_a_run",
    "predict_missing_image",
    "config_file_missing",
    "unknown_field_suggestion",
    "checkpoint_not_a_kind",
    "evaluate_without_checkpoint",
    "bad_lexicon",
    "pretrained_missing",
    "workdir_not_writable",
    "prepared_data_of_another_size",
    "predict_nothing_readable",
])
def test_bad_invocation_fails_with_a_clear_message(commands, name):
  """One line naming the file, field or flag, a non-zero exit, no traceback; and a run that
  fails in its set-up leaves no config.json behind."""
  background, expected = commands[name]
  result = background.result()
  assert result.returncode != 0
  assert not result.stdout.strip(), result.stdout
  for text in expected:
    assert text in result.stderr, f"{text!r} not in:\n{result.stderr[-3000:]}"
  assert TRACEBACK not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
  assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr[-3000:]
  assert "Unable to initialize backend" not in result.stderr
  for arg in background.args:
    if arg.startswith("--workdir=") and "--mode=predict" not in background.args:
      assert not (pathlib.Path(arg.split("=", 1)[1]) / "config.json").exists()


def test_abandoned_orbax_writes_log_no_traceback():
  """After a failed save, asyncio reports each write Orbax left behind ('exception was never
  retrieved', with its traceback): quiet_orbax drops those records and keeps any other error."""
  import logging  # pylint: disable=import-outside-toplevel
  from sevlm_jax import checkpoints  # pylint: disable=import-outside-toplevel

  def raised_in(filename):
    code = compile("raise ValueError('OUT_OF_RANGE: Error writing')", filename, "exec")
    try:
      exec(code, {})  # pylint: disable=exec-used
    except ValueError as e:
      return (ValueError, e, e.__traceback__)

  checkpoints.quiet_orbax()
  logger = logging.getLogger("asyncio")
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger.addHandler(handler)
  try:
    logger.error("_GatheringFuture exception was never retrieved",
                 exc_info=raised_in("/site-packages/orbax/checkpoint/_src/serialization.py"))
    logger.error("Task exception was never retrieved", exc_info=raised_in("/app/mine.py"))
  finally:
    logger.removeHandler(handler)
  assert [r.getMessage() for r in records] == ["Task exception was never retrieved"]
