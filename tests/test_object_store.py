"""gs:// paths through etils.epath, offline: a local Google Cloud Storage emulator
(gcp-storage-emulator) serves both gcsfs (epath's gs:// backend, reached through
STORAGE_EMULATOR_HOST) and tensorstore (Orbax's checkpoints, through TENSORSTORE_GCS_HTTP_URL).

What runs against it: io_utils' writes, a failed write, folder replacement, checks and local
copies; a prepared data set written to and read from the bucket; pretrained weights read from it;
a whole tiny run (train, validate, evaluate, report) whose workdir, data.ready_dir and
data.lexicon are in the bucket, its checkpoints read back, a Predictor made from it and its export
written to the bucket and loaded from there.
"""

import json
import os
import socket

import fsspec
import numpy as np
import pytest

pytest.importorskip("gcsfs", reason="the [gcs] extra")
pytest.importorskip("gcp_storage_emulator", reason="the test extra")

from etils import epath  # pylint: disable=wrong-import-position
from gcp_storage_emulator import server as emulator  # pylint: disable=wrong-import-position
from gcp_storage_emulator.handlers import objects  # pylint: disable=wrong-import-position

import helpers  # pylint: disable=wrong-import-position
from sevlm_jax import checkpoints  # pylint: disable=wrong-import-position
from sevlm_jax import io_utils  # pylint: disable=wrong-import-position
from sevlm_jax.data import prepare  # pylint: disable=wrong-import-position
from sevlm_jax.data import records  # pylint: disable=wrong-import-position
from sevlm_jax.data import vad  # pylint: disable=wrong-import-position

BUCKET = "sevlm-test"


def _with_generation_headers():
  """The emulator sends no x-goog-generation header with an object's bytes; tensorstore needs it
  (for its conditional writes) and gcsfs ignores it. Added in front of the emulator's handler."""
  original = objects.download
  if getattr(original, "adds_generation", False):
    return

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = obj["generation"]
      response["x-goog-metageneration"] = obj["metageneration"]
    except Exception:  # pylint: disable=broad-except  # a missing object: the handler says 404
      pass
    return original(request, response, storage, *args, **kwargs)

  download.adds_generation = True
  objects.download = download
  for _, handlers in emulator.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is original:
        handlers[method] = download


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
  """gs://sevlm-test/ served by the emulator for this module (and the commands it starts)."""
  _with_generation_headers()
  port = _free_port()
  server = emulator.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://localhost:{port}"
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("STORAGE_EMULATOR_HOST", url)
    mp.setenv("TENSORSTORE_GCS_HTTP_URL", url)
    try:
      yield f"gs://{BUCKET}"
    finally:
      server.stop()


def _names(folder) -> list[str]:
  """Every object under `folder`, relative to it (epath has no recursive listing on gs://)."""
  root = str(folder).removeprefix("gs://")
  return sorted(p[len(root) + 1:] for p in fsspec.filesystem("gs").find(root))


def test_atomic_writes_write_whole_objects_and_no_temporary_ones(gcs):
  folder = f"{gcs}/writes"
  io_utils.write_json_atomic(f"{folder}/a.json", {"x": [1, 2]})
  io_utils.write_bytes_atomic(f"{folder}/b.bin", b"\x00\x01")
  table = np.arange(12, dtype=np.float32).reshape(4, 3)
  io_utils.save_npy_atomic(f"{folder}/c.npy", table)
  assert json.loads(epath.Path(folder, "a.json").read_text()) == {"x": [1, 2]}
  assert epath.Path(folder, "b.bin").read_bytes() == b"\x00\x01"
  np.testing.assert_array_equal(io_utils.load_npy(f"{folder}/c.npy"), table)
  assert _names(folder) == ["a.json", "b.bin", "c.npy"]
  assert io_utils.remove_stale_temps(folder, "a") == []


def test_a_failed_write_leaves_the_old_object(gcs, monkeypatch):
  import gcsfs  # pylint: disable=import-outside-toplevel
  # The emulator cannot cancel an upload session (GCS can; gcsfs would retry for half a minute):
  # the session is only dropped, and never finished.
  monkeypatch.setattr(gcsfs.core.GCSFile, "discard", lambda f: setattr(f, "location", None))
  path = f"{gcs}/failed/file.txt"
  io_utils.write_bytes_atomic(path, b"old")

  def broken_chunks():  # past gcsfs's 5 MiB block: a multi-part upload has begun
    yield b"new, but cut off" * (1 << 16)
    yield b"more" * (1 << 20)
    raise OSError("the source went away")

  with pytest.raises(OSError, match="went away"):
    io_utils._write_object(path, broken_chunks())  # pylint: disable=protected-access
  with pytest.raises(RuntimeError):
    with io_utils.atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("killed")
  assert epath.Path(path).read_bytes() == b"old"
  assert _names(f"{gcs}/failed") == ["file.txt"]


def test_replace_dir_drops_the_old_objects_and_uploads_the_marker_last(gcs, tmp_path, monkeypatch):
  out = epath.Path(f"{gcs}/folder")
  (out / "stale.txt").write_text("from the old folder")
  (out / "kept.txt").write_text("old")
  tmp = io_utils.temp_dir_beside(out)
  assert io_utils.is_local(tmp)  # built locally: an object store has no rename
  for name, text in [("a.txt", "a"), ("sub/b.txt", "b"), ("kept.txt", "new"), ("z_marker", "")]:
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_text(text)
  uploaded = []
  upload = io_utils.upload_file
  monkeypatch.setattr(io_utils, "upload_file",
                      lambda local, path: (uploaded.append(str(path)), upload(local, path))[1])
  io_utils.replace_dir(tmp, out, marker="a.txt")
  assert _names(out) == ["a.txt", "kept.txt", "sub/b.txt", "z_marker"]
  assert (out / "kept.txt").read_text() == "new"
  assert uploaded[-1] == f"{out}/a.txt"
  assert not tmp.exists()


def test_path_checks_name_what_is_missing(gcs):
  io_utils.write_bytes_atomic(f"{gcs}/checks/file.txt", b"x")
  assert io_utils.path_problem(f"{gcs}/checks/file.txt", "file") is None
  assert io_utils.path_problem(f"{gcs}/checks", "folder") is None
  assert io_utils.path_problem(f"{gcs}/checks/file.txt", "folder") == "is a file, not a folder"
  assert io_utils.path_problem(f"{gcs}/checks", "file") == "is a folder, not a file"
  assert io_utils.path_problem(f"{gcs}/checks/none.txt", "file") == "does not exist"
  io_utils.check_can_create(f"{gcs}/checks/new_folder")
  assert _names(f"{gcs}/checks") == ["file.txt"]  # the probe object is gone
  with pytest.raises(OSError, match="gs://no-such-bucket/out cannot be created"):
    io_utils.check_can_create("gs://no-such-bucket/out")


def test_local_copy_is_downloaded_once(gcs):
  path = f"{gcs}/copies/data.bin"
  io_utils.write_bytes_atomic(path, b"0123456789")
  local = io_utils.local_copy(path)
  assert io_utils.is_local(local) and open(local, "rb").read() == b"0123456789"
  inode = os.stat(local).st_ino
  assert io_utils.local_copy(path) == local and os.stat(local).st_ino == inode  # not fetched again
  assert io_utils.local_copy(local) == local  # a local path is its own copy
  os.utime(local, (0, 0))  # as if the object had been rewritten since, with the same size
  assert open(io_utils.local_copy(path), "rb").read() == b"0123456789"
  assert os.stat(local).st_ino != inode


@pytest.fixture(scope="module")
def ready_on_gcs(gcs, tmp_path_factory):
  """The shared demo data set, prepared again into the bucket."""
  raw = helpers.demo_root(tmp_path_factory) / "raw"
  out = f"{gcs}/ready"
  prepare.prepare_ready(raw / "artemis_demo.csv", raw / "images", out, fmt="v1", image_size=32,
                        text_preprocessing="raw", workers=0, progress=False, log=lambda *a: None)
  return out


def test_a_ready_data_set_in_the_bucket_reads_like_the_local_one(ready_on_gcs, tmp_path_factory):
  local = helpers.demo_root(tmp_path_factory) / "ready"
  assert records.is_complete(ready_on_gcs)
  assert _names(ready_on_gcs) == sorted(p.name for p in local.iterdir())
  for split in records.SPLITS:
    assert records.load_annotations(ready_on_gcs, split) == records.load_annotations(local, split)
  remote, here = records.load_split(ready_on_gcs, "val"), records.load_split(local, "val")
  assert len(remote) == len(here) > 0
  np.testing.assert_array_equal(remote[0]["image"], here[0]["image"])


def test_a_run_whose_workdir_and_data_are_in_the_bucket(gcs, ready_on_gcs, tmp_path,
                                                        tmp_path_factory):
  workdir, lexicon = f"{gcs}/run", f"{gcs}/inputs/lexicon.txt"
  io_utils.upload_file(vad.DEMO_LEXICON_PATH, lexicon)
  args = helpers.main_args(helpers.demo_root(tmp_path_factory), workdir,
                           "--config.data.source=ready", f"--config.data.ready_dir={ready_on_gcs}",
                           f"--config.data.lexicon={lexicon}",
                           "--config.data.text_preprocessing=raw")
  result = helpers.run_main(args, helpers.compile_cache(tmp_path_factory), tmp_path / "run",
                            timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  names = _names(workdir)
  for name in ("config.json", "vad_table.npy", "metrics.jsonl", "metrics_test.json",
               "predictions_test.json", "report_test.html"):
    assert name in names, names
  assert any(n.startswith("checkpoints/latest/12/") for n in names), names
  assert any(n.startswith("judge/") for n in names), names
  assert json.loads(epath.Path(workdir, "metrics_test.json").read_text())  # scores were written
  # No append on a bucket: the writers rewrite metrics.jsonl and upload the events whole.
  rows = [json.loads(l) for l in epath.Path(workdir, "metrics.jsonl").read_text().splitlines()]
  assert {"train", "val", "test"} <= {r["split"] for r in rows}, rows
  assert any(n.startswith("tensorboard/events.out.tfevents") for n in names), names
  assert len(json.loads(epath.Path(workdir, "predictions_test.json").read_text())) == 12
  assert not (helpers.REPO / "gs:" / BUCKET).exists()  # no local folder named after the URI
  assert checkpoints.has_checkpoint(workdir)
  params, meta = checkpoints.restore_params(workdir, "latest")
  assert meta["step"] == 12 and params

  from sevlm_jax.inference import export  # pylint: disable=import-outside-toplevel
  out = f"{gcs}/export"
  export.export_model(workdir, out)
  manifest = json.loads(epath.Path(out, export.MANIFEST).read_text())
  assert sorted(manifest["files"]) == [n for n in _names(out) if n != export.MANIFEST]
  from sevlm_jax.inference import model_dir  # pylint: disable=import-outside-toplevel
  from sevlm_jax.inference import predictor  # pylint: disable=import-outside-toplevel
  exported = model_dir.load_exported(out)  # every file checked against the manifest's sha256
  np.testing.assert_array_equal(exported.vad_table, io_utils.load_npy(f"{workdir}/vad_table.npy"))
  from_run = predictor.Predictor.from_workdir(workdir, "latest")
  image = records.load_split(ready_on_gcs, "test")[0]["image"]
  assert from_run.predict([image])[0]["emotion"]

  shared = f"{gcs}/shared_judge"  # main's image-blind run copies the judge like this
  io_utils.copy_tree(f"{workdir}/judge", shared)
  assert _names(shared) == [n[len("judge/"):] for n in names if n.startswith("judge/")]


def test_pretrained_weights_in_the_bucket_are_read_from_a_local_copy(gcs, tmp_path):
  from safetensors import numpy as safetensors_np  # pylint: disable=import-outside-toplevel
  from sevlm_jax.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  from sevlm_jax.weights import io as weights_io  # pylint: disable=import-outside-toplevel
  safetensors_np.save_file({"w": np.ones((2, 3), np.float32)}, str(tmp_path / "model.safetensors"))
  io_utils.upload_file(tmp_path / "model.safetensors", f"{gcs}/weights/clip/model.safetensors")
  files = weights_io.resolve(f"{gcs}/weights/clip")
  assert len(files) == 1 and io_utils.is_local(files[0])
  assert files[0].read_bytes() == (tmp_path / "model.safetensors").read_bytes()
  with pytest.raises(CheckpointError, match="does not exist"):
    weights_io.resolve(f"{gcs}/weights/none")


def test_raw_inputs_in_a_bucket_are_one_clear_error(tmp_path):
  from sevlm_jax.data import sources  # pylint: disable=import-outside-toplevel
  from sevlm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  config = helpers.load_config("demo")
  config.data.source, config.data.csv = "artemis_v1", "gs://b/a.csv"
  config.data.images = str(tmp_path)
  with pytest.raises(ConfigError, match="data.csv: gs://b/a.csv: preparation reads the raw CSV"):
    sources.check_data_source(config, str(tmp_path / "ready"))
