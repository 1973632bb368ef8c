"""ArtEmis as a TFDS data set (sevlm_jax/data/tfds_artemis.py, tfds_source.py): the builder's
records are prepare's, `tfds.data_source` reads them where TensorFlow cannot be imported, and
data.source=tfds gives the batches of the project's own records and trains."""

import csv
import json
import pathlib
import pickle
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow_datasets")

from sevlm_jax.data import pipeline
from sevlm_jax.data import prepare
from sevlm_jax.data import records
from sevlm_jax.data import sources
from sevlm_jax.data import tfds_artemis
from sevlm_jax.data import tfds_source
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.errors import ConfigError
from helpers import compile_cache, main_args, run_main, tiny_config

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
RAW_CSV = FIXTURES / "artemis_small.csv"
SIZE = 32  # the tiny config's image size
CONFIG_NAME = "small"


def _images_for(csv_path, root) -> pathlib.Path:
  """A picture per painting of the CSV, its pixels drawn from its name (so records differ)."""
  with open(csv_path, newline="", encoding="utf-8") as f:
    names = {(r["art_style"], r["painting"]) for r in csv.DictReader(f)}
  for style, name in sorted(names):
    rng = np.random.default_rng(zlib.crc32(f"{style}/{name}".encode()))
    (root / style).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (28, 40, 3), dtype=np.uint8)).save(root / style / f"{name}.jpg")
  return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(prepare's ready data set, the builder's TFDS build) of the small ArtEmis fixture."""
  tmp = tmp_path_factory.mktemp("tfds")
  images = _images_for(RAW_CSV, tmp / "wikiart")
  ready, _ = prepare.prepare_ready(RAW_CSV, images, tmp / "ready", image_size=SIZE, workers=0,
                                   progress=False, log=lambda *a: None)
  config = tfds_artemis.ArtemisConfig(name=CONFIG_NAME, csv=(str(RAW_CSV),), images=str(images),
                                      image_size=SIZE)
  build = tfds_artemis.build(tmp / "tensorflow_datasets", config, workers=0, verbose=False)
  return ready, build


def _as_comparable(rec: dict) -> dict:
  return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in rec.items()}


def test_builder_writes_array_record_with_prepares_records_meta_and_report(built):
  ready, build = built
  assert build.parts[-3:] == ("artemis", CONFIG_NAME, tfds_artemis.VERSION)
  assert sorted(p.name for p in build.glob("*.array_record-*"))  # TFDS's array_record shards
  assert not list((build.parents[2] / "downloads").glob("artemis_prepare_*"))  # staging removed
  assert all(records.load_meta(ready)["splits"][s]["images"] > 0 for s in records.SPLITS)
  for split in records.SPLITS:
    mine = [_as_comparable(r) for r in records.load_split(ready, split)]
    theirs = [_as_comparable(r) for r in records.load_split(build, split)]
    assert theirs == mine, split  # pixels, text, labels and order
    assert records.load_annotations(build, split) == records.load_annotations(ready, split)
  assert records.load_meta(build) == records.load_meta(ready)
  assert records.load_report(build) == records.load_report(ready)
  assert records.load_meta(build)["text_preprocessing"] == "artemis"


# Reads the build by name as anyone would: no sevlm_jax, and `import tensorflow` fails (a finder
# claims the name and fails it, so this holds where TensorFlow is installed too).
_READER = r"""
import importlib.abc, importlib.machinery, json, sys

class NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      return importlib.machinery.ModuleSpec(name, self)
  def create_module(self, spec):
    raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked)", name=spec.name)
  def exec_module(self, module):
    pass

sys.meta_path.insert(0, NoTensorFlow())
try:
  import tensorflow
  sys.exit("tensorflow imported")
except ImportError:
  pass
import tensorflow_datasets as tfds
sources = tfds.data_source(sys.argv[1], data_dir=sys.argv[2])
first = sources["train"][0]
print(json.dumps({"splits": {s: len(v) for s, v in sources.items()},
                  "image_id": first["image_id"].decode(), "image": first["image"].tolist(),
                  "emotions": [int(e) for e in first["emotions"]],
                  "utterances": [u.decode() for u in first["utterances"]],
                  "tensorflow": "tensorflow" in sys.modules,
                  "sevlm_jax": any(m.startswith("sevlm_jax") for m in sys.modules)}))
"""


def test_tfds_data_source_reads_the_build_where_tensorflow_cannot_be_imported(built):
  ready, build = built
  out = subprocess.run([sys.executable, "-c", _READER, f"artemis/{CONFIG_NAME}", str(build.parents[2])],
                       capture_output=True, text=True, timeout=300, cwd=build.parents[2])
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert not got["tensorflow"] and not got["sevlm_jax"]
  meta = records.load_meta(ready)["splits"]
  assert got["splits"] == {s: meta[s]["images"] for s in records.SPLITS if meta[s]["images"]}
  first = records.load_split(ready, "train")[0]
  assert got["image_id"] == first["image_id"] and got["image"] == first["image"].tolist()
  assert (got["emotions"], got["utterances"]) == (first["emotions"], first["utterances"])


def _batches(ready_dir, tokenizer, n: int) -> list[dict]:
  loader = pipeline.train_loader(ready_dir, tokenizer, batch_size=4, max_len=24, seed=3,
                                 shard_index=0, shard_count=1)
  it = iter(loader)
  return [next(it) for _ in range(n)]


def test_data_source_tfds_gives_the_batches_of_the_projects_own_records(built, tmp_path):
  ready, build = built
  config = tiny_config(ready, **{"data.source": "tfds", "data.ready_dir": str(build.parent),
                                 "data.image_size": SIZE, "data.text_preprocessing": "artemis"})
  resolved = sources.resolve_ready_dir(config, str(tmp_path))
  assert pathlib.Path(resolved) == build  # the newest version folder of artemis/small
  sources.check_prepared(config, str(build.parent))
  config.data.image_size = 2 * SIZE
  with pytest.raises(ConfigError, match=f"holds {SIZE}x{SIZE} images"):  # checked as prepare's
    sources.check_prepared(config, str(build.parent))
  split = tfds_source.TfdsSplit(resolved, "train")  # grain's worker processes get it pickled
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(split))[1]["image"], split[1]["image"])
  tokenizer = tokenizer_lib.load_tokenizer()
  steps = pipeline.steps_per_epoch(ready, batch_size=4)
  assert pipeline.steps_per_epoch(resolved, batch_size=4) == steps > 0
  for mine, theirs in zip(_batches(ready, tokenizer, steps + 2), _batches(resolved, tokenizer, steps + 2)):
    assert mine.keys() == theirs.keys()
    for key in mine:
      np.testing.assert_array_equal(theirs[key], mine[key], err_msg=key)
  for mine, theirs in zip(pipeline.eval_batch_parts(ready, "test", batch_size=8),
                          pipeline.eval_batch_parts(resolved, "test", batch_size=8)):
    for key in mine:
      np.testing.assert_array_equal(theirs[key], mine[key], err_msg=key)


def test_data_source_tfds_without_a_build_says_how_to_make_one(tmp_path):
  config = tiny_config(tmp_path, **{"data.source": "tfds", "data.ready_dir": str(tmp_path)})
  with pytest.raises(ConfigError, match="python -m sevlm_jax.data.tfds_artemis"):
    sources.check_data_source(config, str(tmp_path))


def test_a_tiny_run_trains_from_the_tfds_build(built, tmp_path, tmp_path_factory):
  _, build = built
  workdir = tmp_path / "run"
  args = main_args(build.parent, workdir, "--config.data.source=tfds",
                   "--config.data.text_preprocessing=artemis",
                   f"--config.data.lexicon={vad_lib.DEMO_LEXICON_PATH}",
                   "--config.train.num_steps=3", "--config.train.log_every=1",
                   "--config.train.eval_every=3", "--config.train.checkpoint_every=3")
  out = run_main(args, compile_cache(tmp_path_factory), tmp_path / "main")
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
  assert [l["step"] for l in lines if l["split"] == "train"] == [1, 2, 3], lines[:4]
  assert json.loads((workdir / "config.json").read_text())["data"]["source"] == "tfds"


def test_a_build_without_its_manual_download_names_the_folder_to_fill(tmp_path):
  with pytest.raises(FileNotFoundError, match="downloads/manual does not exist.*artemis_dataset_release_v0.csv"):
    tfds_artemis.build(tmp_path / "tensorflow_datasets", "v1", verbose=False)
  assert not list((tmp_path / "tensorflow_datasets" / "artemis").rglob("*.array_record-*"))
