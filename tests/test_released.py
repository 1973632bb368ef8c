"""The authors' released SEVLM with no data set: Predictor.from_released, the command line's
predict and export of it, and the configs shipped inside the wheel.

A tiny model is saved in the authors' layout (nle_model_<name>/ and ckpt_stats_<name>.tar, by
tests/public_sevlm_torch.py). Its predictions through from_released must equal those of the
evaluate-mode import (main.evaluate on the demo data, then Predictor.from_workdir), which reads
the same files through the whole data path.
"""

import json
import logging
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

import helpers
from sevlm_jax.config import presets
from sevlm_jax.data import vad
from sevlm_jax.errors import ConfigError
from sevlm_jax.inference import export as export_lib
from sevlm_jax.inference import model_dir
from sevlm_jax.inference import released
from sevlm_jax.inference.predictor import Predictor
from sevlm_jax.models import ModelConfig

torch = pytest.importorskip("torch")
public = pytest.importorskip("public_sevlm_torch")

LEXICON = str(vad.DEMO_LEXICON_PATH)
# configs/sevlm.py:demo,official with the tiny model (a public contrastive head has 4 hidden
# layers), the full output vocabulary (the authors'), and the filter the demo data set was
# prepared with (evaluation refuses another).
OVERRIDES = {**{k: v for k, v in helpers.TINY.items() if k.startswith(("model.", "eval."))},
             "model.contrastive.layers": 4, "output_vocab": "full", "data.resize_filter": "bicubic"}
# Only what the evaluate-mode run needs beyond that: the demo data set and a quick EA judge.
EVALUATE = {"data.demo_num_images": helpers.TINY["data.demo_num_images"], "eval.report": False,
            "judge.num_epochs": 1}


def with_fields(config, fields: dict):
  for key, value in fields.items():
    *parents, name = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    assert name in node, key
    node[name] = value
  return config


def tiny_released_config(clip_dir, **extra):
  """The tiny config, its vision tower from clip_dir (as the real one comes from CLIP's files)."""
  return with_fields(helpers.load_config("demo,official"),
                     {**OVERRIDES, "pretrained.clip": str(clip_dir), **extra})


def cli_args(released_dir, clip_dir, *extra) -> list[str]:
  """The same config on the command line, with no --workdir, data set or checkpoint."""
  return (["--config=configs/sevlm.py:demo,official", f"--config.pretrained.sevlm={released_dir}",
           f"--config.pretrained.clip={clip_dir}", f"--config.data.lexicon={LEXICON}"]
          + [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + list(extra))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> pathlib.Path:
  """A tiny CLIP vision tower with random weights, saved as transformers saves one."""
  transformers = pytest.importorskip("transformers")
  v = ModelConfig.from_dict(tiny_released_config("").model).vision
  torch.manual_seed(1)
  model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.width,
      intermediate_size=v.mlp_dim, num_hidden_layers=v.layers, num_attention_heads=v.heads))
  directory = tmp_path_factory.mktemp("clip")
  model.save_pretrained(directory)
  return directory


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory) -> pathlib.Path:
  """A tiny public model with random weights, large enough that answers differ per image."""
  model_config = ModelConfig.from_dict(tiny_released_config("").model)
  d, v = model_config.decoder, model_config.vad
  model = public.PublicSEVLM(d.vocab_size, d.width, d.layers, d.heads, d.mlp_dim, d.max_positions,
                             model_config.contrastive.hidden)
  emo = public.VADTransformer(v.width, v.layers, v.heads, v.mlp_dim)
  public.randomize(model, seed=0, std=0.2)
  public.randomize(emo, seed=1)
  directory = tmp_path_factory.mktemp("released")
  public.save_public_checkpoint(model.eval(), emo.eval(), str(directory), name="7")
  return directory


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list:
  """Two arrays and a PNG of another size (resized on the way in)."""
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("images") / "painting.png"
  Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
  return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)] + [str(path)]


@pytest.fixture(scope="module")
def from_released(released_dir, clip_dir):
  return Predictor.from_released(str(released_dir), lexicon=LEXICON,
                                 config=tiny_released_config(clip_dir))


@pytest.fixture(scope="module")
def evaluated_workdir(tmp_path_factory, released_dir, clip_dir) -> pathlib.Path:
  """The evaluate-mode import: main.evaluate of the released files on the demo data."""
  from sevlm_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  config = tiny_released_config(clip_dir, **EVALUATE, **{
      "data.ready_dir": str(helpers.demo_root(tmp_path_factory)),
      "pretrained.sevlm": str(released_dir)})
  workdir = tmp_path_factory.mktemp("evaluated")
  results = main_lib.evaluate(config, str(workdir))
  assert results["checkpoint"] == {"kind": released.CHECKPOINT_KIND, "step": 0}
  return workdir


def test_from_released_predicts_what_the_evaluate_mode_import_predicts(
    from_released, evaluated_workdir, images):
  from_run = Predictor.from_workdir(str(evaluated_workdir))
  np.testing.assert_array_equal(np.asarray(from_released.vad_table), np.asarray(from_run.vad_table))
  got, want = from_released.predict(images), from_run.predict(images)
  assert got == want
  assert len({p["text"] for p in got}) > 1, got  # answers that depend on the image
  np.testing.assert_array_equal(from_released.emotion_distribution(images),
                                from_run.emotion_distribution(images))


def test_the_log_names_the_authors_switches_applied_and_those_left_at_other_values(
    released_dir, clip_dir, caplog):
  with caplog.at_level(logging.INFO):
    released.prepare(str(released_dir), lexicon=LEXICON, config=tiny_released_config(clip_dir))
  text = caplog.text
  assert "the authors' inference behaviour" in text
  for applied in ("model.vad.causal=False", "model.image_norm=imagenet", "eval.stop_on=any_special",
                  "eval.explanation_after=last_because", "data.vad_lookup=lemma_only"):
    assert applied in text, applied
  assert "data.resize_filter=bicubic (theirs: bilinear)" in text


def test_the_default_config_is_the_authors_inference_behaviour():
  switches = released.inference_switches()
  assert set(switches) == {
      "model.vad.causal", "model.image_norm", "model.vad.mask_padding", "model.fixed_emotion_len",
      "model.contrastive.mean_over_padding", "data.resize_filter", "data.vad_lookup",
      "data.prescale_max_side", "eval.stop_on", "eval.explanation_after", "eval.max_new_tokens",
      "eval.ea_dominant", "eval.ea_histogram"}  # not the training-only ones (loss, optim, ...)
  config = presets.get_config(released.DEFAULT_VARIANTS)
  applied, differing = released.compare_switches(config)
  assert not differing and len(applied) == len(switches)
  assert config.output_vocab == "full" and config.data.image_size == config.model.vision.image_size


def test_from_pretrained_on_the_authors_layout_asks_for_the_lexicon_or_delegates(
    released_dir, monkeypatch):
  with pytest.raises(ConfigError, match=r"needs a VAD lexicon.*lexicon=PATH"):
    Predictor.from_pretrained(str(released_dir))
  calls = []  # the default config's CLIP comes from the hub: record the call instead
  monkeypatch.setattr(Predictor, "from_released", classmethod(
      lambda cls, source, **kwargs: calls.append((source, kwargs))))
  for source in (released_dir, released_dir / "nle_model_7"):
    Predictor.from_pretrained(str(source), lexicon=LEXICON, batch_size=2)
  assert calls == [(str(s), {"lexicon": LEXICON, "batch_size": 2})
                   for s in (released_dir, released_dir / "nle_model_7")]


def test_clear_errors_for_no_lexicon_and_a_folder_without_the_layout(released_dir, clip_dir,
                                                                    tmp_path):
  no_lexicon = tiny_released_config(clip_dir)
  with pytest.raises(ConfigError, match=r"needs a VAD lexicon.*lexicon=PATH.*--config.data.lexicon"):
    Predictor.from_released(str(released_dir), config=no_lexicon)
  with pytest.raises(ConfigError, match=r"lexicon .*missing.tsv is not a file"):
    Predictor.from_released(str(released_dir), lexicon=str(tmp_path / "missing.tsv"),
                            config=no_lexicon)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConfigError, match=r"pretrained.sevlm=.*no nle_model_<name>/ directory"):
    Predictor.from_released(str(tmp_path / "empty"), lexicon=LEXICON, config=no_lexicon)
  with pytest.raises(ConfigError, match=r"output_vocab='train_tokens'"):
    Predictor.from_released(str(released_dir), lexicon=LEXICON,
                            config=tiny_released_config(clip_dir, output_vocab="train_tokens"))


def test_the_command_line_predicts_with_no_workdir_data_set_or_checkpoint(
    released_dir, clip_dir, from_released, images, tmp_path, tmp_path_factory):
  cache = helpers.compile_cache(tmp_path_factory)
  done = helpers.run_main(cli_args(released_dir, clip_dir, "--mode=predict", f"--images={images[2]}"),
                          cache, tmp_path / "predict")
  assert done.returncode == 0, done.stderr[-3000:]
  (line,) = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
  assert line == {"image": images[2], **from_released.predict([images[2]])[0]}
  assert "the authors' inference behaviour" in done.stderr


def test_the_command_line_names_what_is_missing_in_one_line(released_dir, clip_dir, tmp_path,
                                                           tmp_path_factory):
  cache = helpers.compile_cache(tmp_path_factory)
  no_lexicon = [a for a in cli_args(released_dir, clip_dir, "--mode=predict", "--images=a.png")
                if not a.startswith("--config.data.lexicon")]
  failed = helpers.run_main(no_lexicon, cache, tmp_path / "no_lexicon")
  assert failed.returncode == 2
  assert failed.stderr.strip().splitlines()[-1].startswith("error: the authors' released SEVLM "
                                                           "needs a VAD lexicon")
  (tmp_path / "empty").mkdir()
  no_layout = cli_args(tmp_path / "empty", clip_dir, "--mode=predict", "--images=a.png")
  failed = helpers.run_main(no_layout, cache, tmp_path / "no_layout")
  assert failed.returncode == 2
  assert "no nle_model_<name>/ directory" in failed.stderr.strip().splitlines()[-1]


def test_the_command_line_exports_the_authors_model_for_from_pretrained(
    released_dir, clip_dir, from_released, images, tmp_path, tmp_path_factory):
  out, workdir = tmp_path / "exported", tmp_path / "empty_workdir"
  workdir.mkdir()
  done = helpers.run_main(cli_args(released_dir, clip_dir, "--mode=export", f"--out={out}",
                                   f"--workdir={workdir}"),
                          helpers.compile_cache(tmp_path_factory), tmp_path / "export")
  assert done.returncode == 0, done.stderr[-3000:]
  exported = Predictor.from_pretrained(str(out))
  assert exported.predict(images) == from_released.predict(images)
  np.testing.assert_array_equal(exported.emotion_distribution(images),
                                from_released.emotion_distribution(images))
  manifest = json.loads((out / model_dir.MANIFEST).read_text())
  assert manifest["checkpoint"]["kind"] == released.CHECKPOINT_KIND
  assert manifest["vad_table"]["demo_lexicon"] and manifest["vad_table"]["included"]
  card = (out / model_dir.CARD_FILE).read_text()
  assert "## The authors' released model" in card and str(released_dir) in card
  assert "model.vad.causal=False" in card and "data.resize_filter=bicubic (theirs: bilinear)" in card
  assert "No data set was read to export it." in card
  assert "No evaluation was found" in card  # none measured here: the workdir held none


def test_an_export_can_leave_out_a_table_from_a_lexicon_that_may_not_be_shared(
    released_dir, clip_dir, from_released, images, tmp_path, caplog):
  lexicon = tmp_path / "NRC-VAD-Lexicon.txt"  # stands for the user's copy: not the demo's bytes
  lexicon.write_text(vad.DEMO_LEXICON_PATH.read_text() + "\n# the user's copy\n")
  config = tiny_released_config(clip_dir, **{"pretrained.sevlm": str(released_dir),
                                             "data.lexicon": str(lexicon)})
  with caplog.at_level(logging.WARNING):
    shared = export_lib.export_model(None, tmp_path / "shared", released_config=config)
  assert "NRC-VAD's licence forbids" in caplog.text and (shared / model_dir.VAD_FILE).is_file()
  out = export_lib.export_model(None, tmp_path / "out", include_vad_table=False,
                                released_config=config)
  assert not (out / model_dir.VAD_FILE).exists()
  with pytest.raises(ConfigError, match="exported without its VAD table"):
    Predictor.from_pretrained(str(out))
  rebuilt = Predictor.from_pretrained(str(out), lexicon=str(lexicon))
  assert rebuilt.predict(images) == from_released.predict(images)


def test_the_configs_load_from_a_copy_beside_no_checkout(tmp_path):
  """As the wheel ships them (sevlm_jax/_configs): sevlm.py finds emotion_classifier.py beside
  itself, wherever the two lie."""
  for name in ("sevlm.py", "emotion_classifier.py"):
    shutil.copy(helpers.REPO / "configs" / name, tmp_path / name)
  for variants in ("demo", "artemis_v1,official"):
    assert (presets.get_config(variants, directory=tmp_path).to_dict()
            == helpers.load_config(variants).to_dict())
  with pytest.raises(ConfigError, match="unknown variant"):
    presets.get_config("offical")


def test_an_installed_wheel_carries_the_configs(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(tmp_path), str(helpers.REPO)], check=True, capture_output=True,
                 timeout=300)
  (wheel,) = tmp_path.glob("sevlm_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  assert {"sevlm_jax/_configs/sevlm.py", "sevlm_jax/_configs/emotion_classifier.py"} <= names
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  str(target), str(wheel)], check=True, capture_output=True, timeout=300)
  script = ("import json\nfrom sevlm_jax.config import presets\n"
            "print(presets.configs_dir())\n"
            "print(json.dumps(presets.get_config('artemis_v1,official').to_dict()))\n")
  env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu",
         "HOME": str(tmp_path)}
  got = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
  assert got.returncode == 0, got.stderr[-2000:]
  where, config = got.stdout.strip().splitlines()[-2:]
  assert pathlib.Path(where).resolve() == (target / "sevlm_jax" / "_configs").resolve()
  assert json.loads(config) == json.loads(json.dumps(
      helpers.load_config("artemis_v1,official").to_dict()))
