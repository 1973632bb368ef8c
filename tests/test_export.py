"""Export: a tiny trained run as a model directory that loads with no workdir and predicts the
same tokens; clear errors for a missing or corrupt file; the NRC-VAD warning and the table left out."""

import json
import pathlib
import shutil

import numpy as np
import pytest
import safetensors.numpy

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax.data import records
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.inference import export as export_lib
from sevlm_jax.inference import model_dir
from sevlm_jax.inference import predictor as predictor_lib
from helpers import compile_cache, demo_root, run_main


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
  return export_lib.export_model(str(tiny_run), str(tmp_path_factory.mktemp("export") / "model"))


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
  test = records.load_split(demo_root(tmp_path_factory) / "ready", "test")
  return [test[i]["image"] for i in range(len(test))]


def _copy(exported, tmp_path) -> pathlib.Path:
  out = tmp_path / "copy"
  shutil.copytree(exported, out)
  return out


def test_directory_holds_the_documented_files(exported, tiny_run):
  names = {str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()}
  assert names == {"model.safetensors", "config.json", "vad_table.npy", "output_vocab.npy", "README.md",
                   "sevlm_export.json", "tokenizer/encoder.json", "tokenizer/vocab.bpe",
                   "tokenizer/added_tokens.json"}
  tensors = safetensors.numpy.load_file(str(exported / "model.safetensors"))
  assert all(t.dtype == np.float32 for t in tensors.values())
  flat = model_dir.flatten_params(predictor_lib.Predictor.from_workdir(str(tiny_run)).params)
  assert set(tensors) == set(flat) and all("/" in k for k in tensors)
  for k, v in flat.items():
    np.testing.assert_array_equal(tensors[k], v)
  np.testing.assert_array_equal(np.load(exported / "vad_table.npy"), np.load(tiny_run / "vad_table.npy"))
  assert json.loads((exported / "config.json").read_text()) == json.loads((tiny_run / "config.json").read_text())
  manifest = json.loads((exported / "sevlm_export.json").read_text())
  assert manifest["checkpoint"]["kind"] == "best_acc" and manifest["vad_table"]["demo_lexicon"]
  assert set(manifest["files"]) == names - {"sevlm_export.json"}
  assert not list(exported.parent.glob(".model.*")), "no temporary folder is left beside it"


def test_card_reports_data_metrics_use_and_licences(exported, tiny_run):
  card = (exported / "README.md").read_text()
  metrics = json.loads((tiny_run / "metrics_test.json").read_text())
  meta = records.load_meta(demo_root_of(tiny_run))
  assert f"| train | {meta['splits']['train']['images']:,} | {meta['splits']['train']['annotations']:,} |" in card
  assert f"{metrics['ACC']:.3f}" in card and f"{metrics['EA_judge_heldout_accuracy']:.3f}" in card
  assert f"{metrics['captions']['CIDEr']:.3f}" in card
  for text in ("procedurally generated demo", "Intended use", "EA judge", "ArtEmis", "WikiArt",
               "MIT", "Apache-2.0", "demo lexicon"):
    assert text in card, text
  assert "Warning" not in card


def demo_root_of(run: pathlib.Path) -> pathlib.Path:
  config = json.loads((run / "config.json").read_text())
  return pathlib.Path(config["data"]["ready_dir"]) / "ready"


def test_from_pretrained_predicts_what_the_workdir_predicts(exported, tiny_run, test_images):
  from_dir = predictor_lib.Predictor.from_pretrained(str(exported))
  from_run = predictor_lib.Predictor.from_workdir(str(tiny_run))
  assert len(test_images) > from_dir.batch_size  # two batches, the last one padded
  assert from_dir.predict(test_images) == from_run.predict(test_images)
  np.testing.assert_array_equal(from_dir.emotion_distribution(test_images[:3]),
                                from_run.emotion_distribution(test_images[:3]))


def test_export_again_replaces_and_other_folders_are_refused(exported, tiny_run, tmp_path):
  again = export_lib.export_model(str(tiny_run), str(exported), checkpoint="latest")
  assert json.loads((again / "sevlm_export.json").read_text())["checkpoint"]["kind"] == "latest"
  export_lib.export_model(str(tiny_run), str(exported))  # back to best_acc for the other tests
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  with pytest.raises(errors.ConfigError, match="is not a SEVLM export"):
    export_lib.export_model(str(tiny_run), str(mine))
  assert (mine / "notes.txt").read_text() == "keep me"
  with pytest.raises(errors.CheckpointNotFoundError, match="not a trained SEVLM run"):
    export_lib.export_model(str(tmp_path / "no_run"), str(tmp_path / "out"))


@pytest.mark.parametrize("name", ["model.safetensors", "vad_table.npy", "tokenizer/vocab.bpe", "config.json"])
def test_missing_file_is_named(exported, tmp_path, name):
  copy = _copy(exported, tmp_path)
  (copy / name).unlink()
  with pytest.raises(errors.CheckpointNotFoundError, match=str(copy / name)):
    predictor_lib.Predictor.from_pretrained(str(copy))


@pytest.mark.parametrize("name", ["model.safetensors", "vad_table.npy", "output_vocab.npy", "config.json"])
def test_corrupt_file_is_named(exported, tmp_path, name):
  copy = _copy(exported, tmp_path)
  data = (copy / name).read_bytes()
  (copy / name).write_bytes(data[:len(data) // 2])
  with pytest.raises(errors.CheckpointError, match=f"{copy / name}.*sha256 mismatch.*export the model again"):
    predictor_lib.Predictor.from_pretrained(str(copy))


def test_not_an_export_and_bad_manifest(exported, tmp_path):
  with pytest.raises(errors.CheckpointNotFoundError, match="not a SEVLM model directory"):
    predictor_lib.Predictor.from_pretrained(str(tmp_path))
  copy = _copy(exported, tmp_path)
  (copy / "sevlm_export.json").write_text("{not json")
  with pytest.raises(errors.CheckpointError, match="sevlm_export.json: not a readable manifest"):
    predictor_lib.Predictor.from_pretrained(str(copy))


def test_params_that_do_not_fit_the_config_are_named(exported, tmp_path):
  """A consistent manifest over parameters of another shape (hand-edited): the shape check speaks."""
  copy = _copy(exported, tmp_path)
  tensors = safetensors.numpy.load_file(str(copy / "model.safetensors"))
  name = sorted(tensors)[0]
  tensors[name] = np.zeros((3,) + tensors[name].shape, np.float32)
  safetensors.numpy.save_file(tensors, str(copy / "model.safetensors"))
  manifest = json.loads((copy / "sevlm_export.json").read_text())
  manifest["files"]["model.safetensors"] = io_utils.sha256_file(copy / "model.safetensors")
  (copy / "sevlm_export.json").write_text(json.dumps(manifest))
  with pytest.raises(errors.CheckpointError, match=f"does not fit config.json's network.*{name}"):
    model_dir.load_exported(copy)


def test_table_from_another_lexicon_warns_and_can_be_left_out(tiny_run, tmp_path, caplog, monkeypatch,
                                                              test_images):
  """A run whose table came from a user's lexicon: the card and the log warn; exported without the
  table, the directory loads only with that lexicon, and predicts the same."""
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("data", "features", "report*"))
  lexicon = tmp_path / "NRC-VAD-Lexicon.txt"  # stands in for the user's NRC-VAD file
  shutil.copyfile(vad_lib.DEMO_LEXICON_PATH, lexicon)
  provenance = json.loads((run / "vad_table.json").read_text())
  provenance["lexicon"] = str(lexicon)
  (run / "vad_table.json").write_text(json.dumps(provenance))
  not_demo = tmp_path / "not_the_demo_lexicon.tsv"
  not_demo.write_text("calm\t0.5\t-0.5\t0.2\n")
  monkeypatch.setattr(vad_lib, "DEMO_LEXICON_PATH", not_demo)  # so the copy counts as the user's

  with caplog.at_level("WARNING"):
    full = export_lib.export_model(str(run), str(tmp_path / "full"))
  assert "NRC-VAD's licence forbids redistributing" in caplog.text
  assert "**Warning:**" in (full / "README.md").read_text()

  bare = export_lib.export_model(str(run), str(tmp_path / "bare"), include_vad_table=False)
  assert not (bare / "vad_table.npy").exists()
  assert "not included" in (bare / "README.md").read_text()
  with pytest.raises(errors.ConfigError, match="exported without its VAD table.*lexicon=PATH"):
    predictor_lib.Predictor.from_pretrained(str(bare))
  with pytest.raises(errors.ConfigError, match="gives another VAD table"):
    predictor_lib.Predictor.from_pretrained(str(bare), lexicon=str(not_demo))
  rebuilt = predictor_lib.Predictor.from_pretrained(str(bare), lexicon=str(lexicon))
  assert rebuilt.predict(test_images[:4]) == predictor_lib.Predictor.from_pretrained(str(full)).predict(
      test_images[:4])


def test_command_line_export(tiny_run, tmp_path, tmp_path_factory, exported):
  """--mode=export with --checkpoint writes the same parameters as the API; without --out it is an
  error that says what to add."""
  cache = compile_cache(tmp_path_factory)
  out = tmp_path / "cli_model"
  done = run_main(["--mode=export", f"--workdir={tiny_run}", f"--out={out}", "--checkpoint=best_acc"], cache,
                  tmp_path / "export")
  assert done.returncode == 0, done.stderr
  assert "Predictor.from_pretrained" in done.stdout
  for name in ("model.safetensors", "vad_table.npy", "config.json"):
    assert (out / name).read_bytes() == (exported / name).read_bytes(), name
  missing = run_main(["--mode=export", f"--workdir={tiny_run}"], cache, tmp_path / "no_out")
  assert missing.returncode != 0 and "--mode=export needs --out=DIR" in missing.stderr


def test_the_card_names_the_judge_that_read_ea(tmp_path):
  for source in ("trained", "artemis"):
    metrics = {"split": "test", "ACC": 0.5, "EA": 0.4, "checkpoint": {"kind": "best_acc", "step": 3},
               "EA_judge": {"source": source}}
    (tmp_path / "metrics_test.json").write_text(json.dumps(metrics))
    text = "\n".join(export_lib._metrics(tmp_path, "best_acc"))
    assert ("ArtEmis's released text-to-emotion classifier" in text) == (source == "artemis")
    assert ("the project's EA judge" in text) == (source == "trained")
