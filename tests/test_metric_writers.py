"""The metric writers of train.writers: what each records (read back with TensorBoard's own event
reader, and from the W&B run file written offline), and the one-line errors of a bad choice."""

import json
import pathlib
import struct
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from sevlm_jax import errors
from sevlm_jax import vocab
from sevlm_jax.config import migrate
from sevlm_jax.evaluation import confusion_image
from sevlm_jax.evaluation import summaries
from sevlm_jax.training import metrics_writer

from helpers import TINY, load_config

EMOTIONS = list(vocab.EMOTIONS)


def _events(workdir) -> EventAccumulator:
  """Everything under <workdir>/tensorboard, read with tensorboard's reader (no TensorFlow)."""
  return EventAccumulator(str(workdir / "tensorboard"),
                          size_guidance={"scalars": 0, "images": 0}).Reload()


def _hparams(events: EventAccumulator) -> dict:
  content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
  return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def _results(step=7, split="test"):
  """An evaluation's results as evaluate_run returns them (the fields the writers read)."""
  counts = np.zeros((9, 10), np.int64)
  counts[0, 0], counts[0, 9], counts[1, 2] = 3, 1, 2  # amusement 3 of 4 right, awe 0 of 2
  return {"split": split, "checkpoint": {"kind": "best_acc", "step": step}, "emotions": EMOTIONS,
          "confusion_matrix": counts.tolist(),
          "per_emotion_accuracy": {e: {"accuracy": {0: 0.75, 1: 0.0}.get(i), "support": 0}
                                   for i, e in enumerate(EMOTIONS)}}


# ----------------------------------------------------------------------------- choosing them

@pytest.mark.parametrize("spec, message", [
    ("jsonl,tensorbord", "train.writers='tensorbord'; choose one of jsonl, tensorboard, wandb"),
    ("jsonl,jsonl", "names a writer twice"),
])
def test_a_bad_writers_choice_is_one_line_naming_the_field(spec, message):
  with pytest.raises(errors.ConfigError, match=message):
    metrics_writer.parse_writers(spec)


def test_writers_default_to_jsonl_and_tensorboard_also_for_older_configs():
  config = load_config("demo")
  assert metrics_writer.parse_writers(config.train.writers) == ("jsonl", "tensorboard")
  older = config.to_dict()
  older["config_version"] = 1
  del older["train"]["writers"]
  assert migrate.migrate(type(config)(older)).train.writers == "jsonl,tensorboard"


def test_only_the_writers_named_are_opened(tmp_path):
  writer = metrics_writer.MetricsWriter(tmp_path, writers="jsonl")
  writer.write_scalars(1, "train", {"loss": 2.0})
  writer.close()
  assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_a_process_other_than_the_first_writes_nothing(tmp_path):
  writer = metrics_writer.MetricsWriter(tmp_path, enabled=False, writers="jsonl,tensorboard")
  writer.write_hparams({"a": 1})
  writer.write_scalars(1, "train", {"loss": 2.0})
  writer.write_image(1, "x", np.zeros((4, 4, 3), np.uint8))
  writer.close()
  assert list(tmp_path.iterdir()) == []


def test_wandb_missing_names_the_extra_that_installs_it(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
  with pytest.raises(errors.MissingDependencyError,
                     match=r"^train.writers=wandb .* needs wandb, .*pip install 'sevlm_jax\[wandb\]'"):
    metrics_writer.MetricsWriter(tmp_path, writers="jsonl,wandb")


# ----------------------------------------------------------------------------- what they write

def test_the_config_and_an_evaluation_read_back_from_tensorboard_and_jsonl(tmp_path):
  config = load_config("demo")
  writer = metrics_writer.open_for_run(config, tmp_path, enabled=True)
  writer.write_scalars(5, "train", {"loss": 1.5})
  summaries.write_evaluation(config, tmp_path, _results(step=7), {"ACC": 0.6}, writer)
  writer.close()

  events = _events(tmp_path)
  hparams = _hparams(events)
  assert hparams["train.num_steps"] == config.train.num_steps
  assert hparams["model.vision.layers"] == config.model.vision.layers
  assert hparams["train.writers"] == "jsonl,tensorboard"
  assert [(e.step, e.value) for e in events.Scalars("test/ACC")] == [(7, pytest.approx(0.6))]
  assert [e.value for e in events.Scalars("test/per_emotion_accuracy/amusement")] == [0.75]
  assert "test/per_emotion_accuracy/contentment" not in events.Tags()["scalars"]  # no image
  (image,) = events.Images("test/confusion_matrix")
  drawn = confusion_image.draw(_results()["confusion_matrix"], EMOTIONS, EMOTIONS + ["none"])
  assert (image.step, image.height, image.width) == (7, *drawn.shape[:2])

  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[1]["split"] == "test" and rows[1]["step"] == 7 and rows[1]["ACC"] == 0.6
  assert rows[1]["per_emotion_accuracy/amusement"] == 0.75
  assert json.loads((tmp_path / "hparams.json").read_text()) == hparams
  assert (tmp_path / "images" / "test_confusion_matrix_7.png").exists()


def test_a_trained_run_logs_its_config_and_evaluation_to_tensorboard(tiny_run):
  """The shared tiny run (trained and evaluated through the command line): hyperparameters,
  training and validation curves, and the test split's figures and confusion matrix."""
  events = _events(tiny_run)
  assert _hparams(events)["train.num_steps"] == TINY["train.num_steps"]
  tags = events.Tags()
  assert {"train/loss", "val/acc", "test/ACC", "test/CIDEr"} <= set(tags["scalars"])
  assert any(t.startswith("test/per_emotion_accuracy/") for t in tags["scalars"])
  metrics = json.loads((tiny_run / "metrics_test.json").read_text())
  (acc,) = events.Scalars("test/ACC")
  assert acc.step == metrics["checkpoint"]["step"] and acc.value == pytest.approx(metrics["ACC"])
  assert tags["images"] == ["test/confusion_matrix"]


def test_the_confusion_matrix_shades_each_cell_by_its_share_of_the_row():
  counts = np.zeros((2, 3), np.int64)
  counts[0] = [4, 0, 0]
  image = confusion_image.draw(counts, ["a", "b"], ["a", "b", "none"])
  cell = lambda i, j: image[confusion_image.MARGIN + i * confusion_image.CELL + 2,
                            confusion_image.MARGIN + j * confusion_image.CELL + 2]
  assert image.dtype == np.uint8 and image.shape[2] == 3
  assert cell(0, 0)[0] < cell(0, 1)[0] == 255  # all of row a: dark; none of it: white
  assert cell(1, 0)[0] == 255  # an empty row stays white


# ----------------------------------------------------------------------------- Weights & Biases

def _wandb_records(workdir) -> list:
  """The records of the offline W&B run file (<workdir>/wandb/offline-run-*/run-*.wandb): 32 KiB
  blocks of records, each chunk with a 7-byte header (crc32, length, kind; kinds 1 = whole,
  4 = last piece), after the file's 7-byte header."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
  (path,) = pathlib.Path(workdir).glob("wandb/offline-run-*/run-*.wandb")
  data, pos, pending, records = path.read_bytes(), 7, b"", []
  while pos + 7 <= len(data):
    if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
      pos += 32768 - pos % 32768
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      records.append(wandb_internal_pb2.Record.FromString(pending))
      pending = b""
  return records


def test_wandb_offline_records_scalars_config_and_the_confusion_matrix(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  for name in ("CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):
    monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / "wandb_home"))
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = load_config("demo")
  config.train.writers = "wandb"
  writer = metrics_writer.open_for_run(config, tmp_path, enabled=True)
  writer.write_scalars(5, "train", {"loss": 1.5})
  summaries.write_evaluation(config, tmp_path, _results(step=3), {"ACC": 0.6}, writer)
  writer.close()

  records = _wandb_records(tmp_path)
  history = [{".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
             for r in records if r.WhichOneof("record_type") == "history"]
  assert {"step": 5, "train/loss": 1.5}.items() <= history[0].items()
  assert {"step": 3, "test/ACC": 0.6, "test/per_emotion_accuracy/amusement": 0.75}.items() \
      <= history[1].items()
  assert history[2]["step"] == 3 and history[2]["test/confusion_matrix._type"] == "image-file"
  config_updates = {u.key: json.loads(u.value_json) for r in records
                    if r.WhichOneof("record_type") == "config" for u in r.config.update}
  assert config_updates["train.num_steps"] == config.train.num_steps
  assert config_updates["train.writers"] == "wandb"
  # A resumed run (or a later --mode=evaluate) adds to the same W&B run.
  run_id = (tmp_path / "wandb_run_id").read_text()
  metrics_writer.MetricsWriter(tmp_path, writers="wandb").close()
  runs = list(tmp_path.glob("wandb/offline-run-*"))  # offline-run-<time>-<id>: one per start
  assert runs and all(run.name.endswith(f"-{run_id}") for run in runs)
  assert (tmp_path / "wandb_run_id").read_text() == run_id
