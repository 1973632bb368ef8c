"""Output: files written whole or not at all, and the progress of long work.

Every output file goes to a temporary name beside it, then is renamed: a reader (or a rerun
after a kill) sees the old file or the complete new one, never a part. Temporary names are
`<name>.tmp<pid>`, so leftovers of a killed process are recognisable and removed on a rerun.
"""

import contextlib
import hashlib
from importlib import resources
import json
import os
import pathlib
import shutil
import sys
import time
import uuid
from typing import Any, Iterator

from absl import logging
import numpy as np


def temp_name(path: str | os.PathLike) -> str:
  return f"{os.fspath(path)}.tmp{os.getpid()}"


def pid_alive(pid: int) -> bool:
  """Is a process with this id running on this machine?"""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


def remove_stale_temps(directory: str | os.PathLike, prefix: str) -> list[str]:
  """Deletes `<prefix>*.tmp<pid>` files in `directory` left by killed processes (their pid is
  gone); a live writer's file stays. Returns the removed paths."""
  removed = []
  if not os.path.isdir(directory):
    return removed
  for name in os.listdir(directory):
    stem, sep, pid = name.rpartition(".tmp")
    if name.startswith(prefix) and sep and pid.isdigit() and not pid_alive(int(pid)):
      path = os.path.join(directory, name)
      os.remove(path)
      removed.append(path)
  return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path to write; it is renamed onto `path` if the block succeeds and
  removed if it raises."""
  tmp = temp_name(path)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())  # on disk before the rename makes it visible


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  write_bytes_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
      np.save(f, array)


def temp_dir_beside(out: pathlib.Path) -> pathlib.Path:
  """A fresh hidden folder next to `out` (same file system, so a rename is atomic); the folders
  of earlier, killed attempts at `out` are removed first."""
  out.parent.mkdir(parents=True, exist_ok=True)
  for stale in out.parent.glob(f".{out.name}.incomplete-*-*"):
    pid = stale.name.rsplit("-", 2)[-2]
    if pid.isdigit() and not pid_alive(int(pid)):
      shutil.rmtree(stale, ignore_errors=True)
  tmp = out.parent / f".{out.name}.incomplete-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  return tmp


def replace_dir(tmp: pathlib.Path, out: pathlib.Path) -> None:
  """Renames the finished folder `tmp` (from temp_dir_beside) onto `out`, replacing any folder
  there: a reader sees the old folder or the new one whole (for an instant, neither)."""
  if out.exists():
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out)



def sha256_file(path) -> str:
  """Hex sha256 of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()

def vendored_dir(env_var: str, name: str) -> pathlib.Path:
  """Where third_party/<name>/ (shipped in the wheel as sevlm_jax/_<name>/, see setup.cfg) lies:
  $env_var if set; else the installed copy; else the folder of this checkout."""
  if os.environ.get(env_var):
    return pathlib.Path(os.environ[env_var])
  installed = pathlib.Path(__file__).resolve().parent / f"_{name}"
  if installed.is_dir():
    return installed
  return pathlib.Path(__file__).resolve().parents[1] / "third_party" / name


def package_text(package: str, name: str) -> str:
  """The text of <package>/assets/<name>, a data file shipped in the wheel (setup.cfg's
  package_data), read where the package is installed or checked out."""
  return resources.files(package).joinpath("assets", name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- progress

def format_duration(seconds: float) -> str:
  """'1d 02:03:04' (days shown past 24 h), '02:03:04', or '?' when unknown."""
  if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
    return "?"
  days, rest = divmod(int(round(seconds)), 86400)
  hours, rest = divmod(rest, 3600)
  clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
  return f"{days}d {clock}" if days else clock


class Progress:
  """Progress of long work: a bar on a terminal, otherwise a log line at most every log_every_s
  seconds (and at the end), with the rate and the time left.

    with Progress("images", total=len(jobs), unit="img") as bar:
      for job in jobs:
        ...
        bar.update()
  """

  def __init__(self, what: str, total: int | None = None, unit: str = "it", *,
               enabled: bool = True, log_every_s: float = 30.0, stream=None):
    self.what, self.total, self.unit = what, total, unit
    self.done, self.enabled, self.log_every_s = 0, enabled, log_every_s
    self._start = self._logged = time.monotonic()
    stream = stream or sys.stderr
    self._bar = None
    if enabled and getattr(stream, "isatty", lambda: False)():
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total, unit=unit, desc=what, file=stream, dynamic_ncols=True)

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def update(self, n: int = 1) -> None:
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
    elif self.enabled and time.monotonic() - self._logged >= self.log_every_s:
      self._log()

  def line(self) -> str:
    """'images: 120 / 1,000 img (40.0 img/s, 00:00:22 left)'."""
    elapsed = max(time.monotonic() - self._start, 1e-9)
    rate = self.done / elapsed
    of = f" / {self.total:,}" if self.total is not None else ""
    left = ""
    if self.total is not None and self.done < self.total:
      left = f", {format_duration((self.total - self.done) / rate) if rate > 0 else '?'} left"
    return f"{self.what}: {self.done:,}{of} {self.unit} ({rate:.1f} {self.unit}/s{left})"

  def _log(self) -> None:
    self._logged = time.monotonic()
    logging.info("%s", self.line())

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    elif self.enabled and self.done:
      self._log()
    self.enabled = False
