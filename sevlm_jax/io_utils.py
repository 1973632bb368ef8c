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


def _hidden_beside(out: pathlib.Path, kind: str) -> pathlib.Path:
  """`.NAME.KIND-PID-RANDOM` next to `out`: whose it is shows in its name."""
  return out.parent / f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_dirs(out: pathlib.Path) -> list[pathlib.Path]:
  """Removes the hidden folders that killed attempts at `out` left beside it, those whose process
  is gone: `.NAME.incomplete-PID-*` (an unfinished new folder) and `.NAME.old-PID-*` (the replaced
  folder, when the kill came between replace_dir's two renames; an older release named it
  `.NAME.old-RANDOM`, with no PID: always a leftover). Returns the removed folders."""
  removed = []
  if not out.parent.is_dir():
    return removed
  prefix = f".{out.name}."
  for name in os.listdir(out.parent):
    if not name.startswith(prefix):
      continue
    kind, _, owner = name[len(prefix):].partition("-")
    pid = owner.split("-")[0] if owner.count("-") == 1 else ""  # owner: PID-RANDOM
    alive = pid.isdigit() and pid_alive(int(pid))
    if kind in ("incomplete", "old") and owner and not alive:
      shutil.rmtree(out.parent / name, ignore_errors=True)
      removed.append(out.parent / name)
  return removed


def temp_dir_beside(out: pathlib.Path) -> pathlib.Path:
  """A fresh hidden folder next to `out` (same file system, so a rename is atomic); the folders
  that earlier, killed attempts at `out` left are removed first (remove_stale_dirs)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_dirs(out)
  tmp = _hidden_beside(out, "incomplete")
  tmp.mkdir()
  return tmp


def replace_dir(tmp: pathlib.Path, out: pathlib.Path) -> None:
  """Renames the finished folder `tmp` (from temp_dir_beside) onto `out`, replacing any folder
  there: a reader sees the old folder or the new one whole (for an instant, neither)."""
  if out.exists():
    old = _hidden_beside(out, "old")  # removed below, or by the next remove_stale_dirs
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out)



def path_problem(path, kind: str) -> str | None:
  """Why `path` is not a `kind` ("file" or "folder"): "does not exist", "is a folder, not a
  file" or "is a file, not a folder"; None when it is one."""
  if not os.path.exists(path):
    return "does not exist"
  if kind == "file" and os.path.isdir(path):
    return "is a folder, not a file"
  if kind == "folder" and not os.path.isdir(path):
    return "is a file, not a folder"
  return None


def check_path(path, kind: str, what: str, hint: str = "") -> None:
  """Raises FileNotFoundError, IsADirectoryError or NotADirectoryError, "{what} {path} {problem}"
  and the hint, unless `path` is a `kind` ("file" or "folder")."""
  problem = path_problem(path, kind)
  if problem is None:
    return
  error = (FileNotFoundError if problem == "does not exist"
           else IsADirectoryError if kind == "file" else NotADirectoryError)
  raise error(f"{what} {path} {problem}{hint}")


def check_can_create(out: str | os.PathLike, what: str = "output folder") -> None:
  """Raises an OSError naming `out` unless a folder can be made there: its nearest existing parent
  is a folder that takes a new file (tried, so that a read-only mount fails here, before any
  work, and not at the end)."""
  out = pathlib.Path(os.path.abspath(out))
  parent = out.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise NotADirectoryError(f"{what} {out} cannot be created: {parent} is a file, not a folder")
  probe = parent / f".{out.name}.write-check-{os.getpid()}"
  try:
    probe.mkdir()
    probe.rmdir()
  except OSError as e:
    raise type(e)(f"{what} {out} cannot be created: {parent} cannot be written to "
                  f"({e.strerror}); choose another folder") from None


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
