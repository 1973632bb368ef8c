"""The run's metric writers, chosen by config.train.writers: metrics.jsonl, TensorBoard events
(tensorboardX: no TensorFlow needed) and, optionally, Weights & Biases (training/wandb_writer.py).

Every writer takes the same four calls; MetricsWriter hands each call to all of them:
  write_scalars(step, split, {name: value})   # training, validation and evaluation figures
  write_hparams(flat_config)                  # the run's config, {dotted field: scalar}
  write_image(step, name, image_HxWx3)        # uint8, e.g. evaluation's confusion matrix
  close()
"""

import io
import json
import os
import shutil
import tempfile
import time
from typing import Any, Protocol

from etils import epath
import numpy as np
from PIL import Image

from sevlm_jax import errors
from sevlm_jax import io_utils

DEFAULT_WRITERS = "jsonl,tensorboard"
WRITERS = ("jsonl", "tensorboard", "wandb")
# The figures TensorBoard's HParams dashboard shows beside each run's config (tags as written by
# write_scalars: split/name; a tag the run never wrote stays empty there).
HPARAMS_METRICS = ("val/acc", "val/bleu4", "test/ACC", "test/EA", "test/BLEU-4", "test/CIDEr")


class Writer(Protocol):
  def write_scalars(self, step: int, split: str, scalars: dict[str, float]) -> None: ...
  def write_hparams(self, hparams: dict[str, Any]) -> None: ...
  def write_image(self, step: int, name: str, image_HxWx3: np.ndarray) -> None: ...
  def close(self) -> None: ...


def parse_writers(spec: str) -> tuple[str, ...]:
  """train.writers ("jsonl,tensorboard") as names, each one of WRITERS, or a ConfigError."""
  names = tuple(n.strip() for n in str(spec).split(",") if n.strip())
  for name in names:
    errors.check_choice("train.writers", name, WRITERS)
  if len(set(names)) != len(names):
    raise errors.ConfigError(f"train.writers={spec!r} names a writer twice")
  return names


def flat_config(config) -> dict[str, Any]:
  """A (nested) config as {dotted field: bool, int, float or str}: what the writers record as
  hyperparameters (None and sequences as their JSON text)."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
    elif isinstance(value, (bool, int, float, str)):
      out[key] = value
    else:
      out[key] = json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, default=str)
  return out


class JsonlWriter:
  """{step, split, time, metrics...} lines appended to <workdir>/metrics.jsonl; the config as
  <workdir>/hparams.json; images as <workdir>/images/<name>_<step>.png."""

  def __init__(self, workdir):
    self._dir = epath.Path(workdir)
    self._file = None  # opened at the first line: a writer that fails to open leaves no file
    # An object store has no append: there the whole file is rewritten (one upload, atomic per
    # object) at each line, starting from what a resumed run already wrote. Metrics are small.
    self._lines: list[str] | None = None if io_utils.is_local(workdir) else []

  def write_scalars(self, step, split, scalars):
    row = json.dumps({"step": int(step), "split": split, "time": time.time(), **scalars}) + "\n"
    path = self._dir / "metrics.jsonl"
    if self._lines is not None:
      if not self._lines and path.exists():
        self._lines.append(path.read_text(encoding="utf-8"))
      self._lines.append(row)
      io_utils.write_bytes_atomic(str(path), "".join(self._lines).encode("utf-8"))
      return
    if self._file is None:
      self._file = path.open("a", encoding="utf-8")
    self._file.write(row)
    self._file.flush()

  def write_hparams(self, hparams):
    io_utils.write_json_atomic(str(self._dir / "hparams.json"), hparams)

  def write_image(self, step, name, image_HxWx3):
    path = self._dir / "images" / f"{name.replace('/', '_')}_{int(step)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    io_utils.write_bytes_atomic(str(path), png_bytes(image_HxWx3))

  def close(self):
    if self._file is not None:
      self._file.close()


class TensorBoardWriter:
  """Events in <workdir>/tensorboard: scalars tagged split/name, the config in the HParams
  dashboard, images."""

  def __init__(self, workdir):
    self._tensorboardx = errors.optional_import("tensorboardX", "training's TensorBoard log")
    self._remote = None if io_utils.is_local(workdir) else epath.Path(workdir) / "tensorboard"
    # On an object store the events are written to a local folder and each flush uploads its
    # files whole (tensorboardX appends to its event file).
    self._local = tempfile.mkdtemp(prefix="sevlm_tb_") if self._remote else None
    self._tb = self._tensorboardx.SummaryWriter(self._local or str(epath.Path(workdir) / "tensorboard"))

  def _flush(self):
    self._tb.flush()
    self._upload()

  def _upload(self):
    if self._remote is not None:
      for name in sorted(os.listdir(self._local)):
        io_utils.upload_file(os.path.join(self._local, name), str(self._remote / name))

  def write_scalars(self, step, split, scalars):
    for name, value in scalars.items():
      self._tb.add_scalar(f"{split}/{name}", value, int(step))
    self._flush()

  def write_hparams(self, hparams):
    # Into this run's own event files: SummaryWriter.add_hparams would open a sub-run per call.
    summaries = self._tensorboardx.summary.hparams(hparams, dict.fromkeys(HPARAMS_METRICS))
    for summary in summaries:  # the experiment, the session's start (the values), its end
      self._tb.file_writer.add_summary(summary)
    self._flush()

  def write_image(self, step, name, image_HxWx3):
    self._tb.add_image(name, image_HxWx3, int(step), dataformats="HWC")
    self._flush()

  def close(self):
    self._tb.close()
    if self._remote is not None:
      self._upload()
      shutil.rmtree(self._local, ignore_errors=True)


def png_bytes(image_HxWx3: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.asarray(image_HxWx3, np.uint8)).save(out, format="PNG")
  return out.getvalue()


def _open_writer(name: str, workdir) -> Writer:
  if name == "jsonl":
    return JsonlWriter(workdir)
  if name == "tensorboard":
    return TensorBoardWriter(workdir)
  from sevlm_jax.training import wandb_writer  # pylint: disable=import-outside-toplevel
  return wandb_writer.WandbWriter(workdir)


class MetricsWriter:
  """The writers train.writers names, each call handed to all of them. Only one process of a
  multi-host run writes (enabled=False elsewhere: every call does nothing)."""

  def __init__(self, workdir, enabled: bool = True, writers: str = DEFAULT_WRITERS):
    self.enabled = enabled
    self._writers: list[Writer] = []
    if not enabled:
      return
    try:
      for name in parse_writers(writers):
        self._writers.append(_open_writer(name, workdir))
    except BaseException:
      self.close()
      raise

  def write_scalars(self, step: int, split: str, scalars: dict[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    for writer in self._writers:
      writer.write_scalars(int(step), split, scalars)

  def write_hparams(self, config) -> None:
    """The run's config (a ConfigDict or a flat dict) as each writer's hyperparameters."""
    hparams = flat_config(config)
    for writer in self._writers:
      writer.write_hparams(hparams)

  def write_image(self, step: int, name: str, image_HxWx3: np.ndarray) -> None:
    image_HxWx3 = np.asarray(image_HxWx3)
    if image_HxWx3.dtype != np.uint8 or image_HxWx3.ndim != 3 or image_HxWx3.shape[-1] != 3:
      raise ValueError(f"write_image({name!r}): needs uint8 HxWx3, got {image_HxWx3.dtype} "
                       f"{image_HxWx3.shape}")
    for writer in self._writers:
      writer.write_image(int(step), name, image_HxWx3)

  def close(self) -> None:
    writers, self._writers = self._writers, []
    for writer in writers:
      writer.close()


def open_for_run(config, workdir, enabled: bool) -> MetricsWriter:
  """The writers of config.train.writers for a run in workdir, with the config recorded as the
  run's hyperparameters."""
  writer = MetricsWriter(workdir, enabled=enabled, writers=config.train.writers)
  try:
    writer.write_hparams(config)
  except BaseException:
    writer.close()
    raise
  return writer
