"""Output: files written whole or not at all, and the progress of long work.

Paths are local (or mounted) paths, or any etils.epath URI (gs://bucket/dir with gcsfs installed,
s3://, az://): `is_local` tells them apart; `as_path` gives a pathlib.Path for the first and an
epath.Path for the second, so that local files are handled exactly as they always were.

Local disks: every output file goes to a temporary name beside it, is fsync'ed, then renamed
(os.replace): a reader (or a rerun after a kill) sees the old file or the complete new one, never a
part. Temporary names are `<name>.tmp<pid>`, so leftovers of a killed process are recognisable and
removed on a rerun.

Object stores have no rename. There one object is written by one upload, which the store makes
atomic: a reader sees the old object or the new one, never a part, and an upload cut off (a kill,
a failed write) leaves the old object. So a file is written in memory or in a local temporary file
and uploaded in one piece to its final name; no temporary object is ever made. A folder of several
files cannot be replaced atomically there: `replace_dir` deletes the old objects, uploads the new
files and the folder's marker file (prepare's COMPLETE, export's manifest) last, and readers trust
a folder only when its marker is there.
"""

import contextlib
import hashlib
from importlib import resources
import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any, Iterator

from absl import logging
from etils import epath
import numpy as np


def is_local(path: str | os.PathLike) -> bool:
  """Is `path` on a local or mounted file system, rather than an object-store URI (gs://...)?"""
  return "://" not in os.fspath(path)


def as_path(path: str | os.PathLike, *parts: str) -> pathlib.Path | epath.Path:
  """`path` (joined with `parts`) as a path object: a pathlib.Path for a local path (as ever), an
  epath.Path for a URI (pathlib would turn gs://b/x into gs:/b/x; epath reaches it through
  fsspec)."""
  if is_local(path):
    return pathlib.Path(path, *parts)
  return epath.Path(path, *parts)


def absolute(path: str | os.PathLike) -> str:
  """The absolute form of a local path; a URI is absolute already."""
  return os.path.abspath(path) if is_local(path) else os.fspath(path)


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
  gone); a live writer's file stays. Returns the removed paths. (On an object store nothing is
  written under a temporary name: nothing to remove.)"""
  removed = []
  if not is_local(directory) or not os.path.isdir(directory):
    return removed
  for name in os.listdir(directory):
    stem, sep, pid = name.rpartition(".tmp")
    if name.startswith(prefix) and sep and pid.isdigit() and not pid_alive(int(pid)):
      path = os.path.join(directory, name)
      os.remove(path)
      removed.append(path)
  return removed


def _write_object(path: str | os.PathLike, chunks: Iterator[bytes]) -> None:
  """Writes `chunks` as the object at a URI in one upload, made visible only by the final
  close(): if a chunk cannot be had or sent, the upload is dropped and the old object stays."""
  f = as_path(path).open("wb")
  try:
    for chunk in chunks:
      f.write(chunk)
  except BaseException:
    # An unfinished multi-part upload is never visible (GCS drops it after a week); fsspec's
    # discard cancels it now, where the store allows. close() (or the garbage collector's)
    # would upload the part: the file is marked closed instead.
    with contextlib.suppress(Exception):
      getattr(f, "discard", lambda: None)()
    with contextlib.suppress(Exception):
      f.closed = True
    raise
  f.close()


def upload_file(local: str | os.PathLike, path: str | os.PathLike) -> None:
  """Copies the local file `local` to `path` (any epath path) whole: an object-store upload is
  atomic per object; a local `path` goes through atomic_path."""
  if is_local(path):
    with atomic_path(path) as tmp:
      shutil.copyfile(local, tmp)
    return
  with open(local, "rb") as f:
    _write_object(path, iter(lambda: f.read(1 << 24), b""))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path to write; it is renamed onto `path` if the block succeeds and
  removed if it raises. For a URI `path` the temporary file is local (with `path`'s name) and
  is uploaded in one piece when the block succeeds."""
  if not is_local(path):
    with tempfile.TemporaryDirectory(prefix="sevlm_upload_") as local_dir:
      local = os.path.join(local_dir, os.path.basename(os.fspath(path)))
      yield local
      upload_file(local, path)
    return
  tmp = temp_name(path)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  if not is_local(path):
    _write_object(path, iter([data]))
    return
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


def _download_dir(path: str | os.PathLike) -> str:
  key = hashlib.sha256(os.fspath(path).encode()).hexdigest()[:16]
  return os.path.join(tempfile.gettempdir(), "sevlm_jax_downloads", key)


def local_copy(path: str | os.PathLike, into: str | None = None) -> str:
  """A local file with the bytes of `path`, for readers that need one (memory-mapping,
  array_record): `path` itself when local; for a URI a copy downloaded into `into`, by default
  the system's temporary folder (sevlm_jax_downloads/<hash of the URI>/<name>), reused while its
  size and modification time (copied from the object's) match the object's."""
  if is_local(path):
    return os.fspath(path)
  source = as_path(path)
  local = os.path.join(into or _download_dir(path), source.name)
  stat = source.stat()
  if (os.path.isfile(local) and os.path.getsize(local) == stat.length
      and int(os.path.getmtime(local)) == int(stat.mtime)):
    return local
  os.makedirs(os.path.dirname(local), exist_ok=True)
  remove_stale_temps(os.path.dirname(local), source.name)  # a killed download's part
  with atomic_path(local) as tmp, source.open("rb") as src, open(tmp, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 24)
  os.utime(local, (stat.mtime, stat.mtime))  # a rewritten object of the same size is fetched again
  return local


def local_copy_tree(path: str | os.PathLike, into: str | None = None) -> str:
  """local_copy of a file, or of a folder with every file under it (pretrained weights in a
  bucket, read by libraries that open local files)."""
  if is_local(path):
    return os.fspath(path)
  source = as_path(path)
  if not source.is_dir():
    return local_copy(path, into)
  local = os.path.join(into or _download_dir(path), source.name)
  os.makedirs(local, exist_ok=True)
  for child in source.iterdir():
    local_copy_tree(child, into=local)
  return local


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """shutil.copytree for local folders; between any epath paths (gs://...) file by file, each
  copied whole."""
  if is_local(src) and is_local(dst):
    shutil.copytree(src, dst)
    return
  as_path(dst).mkdir(parents=True, exist_ok=True)
  for child in as_path(src).iterdir():
    if child.is_dir():
      copy_tree(child, as_path(dst, child.name))
    else:
      write_bytes_atomic(as_path(dst, child.name), child.read_bytes())


def load_npy(path: str | os.PathLike) -> np.ndarray:
  """np.load of a .npy file at any epath path (a URI is read whole into memory first)."""
  if is_local(path):
    return np.load(path)
  return np.load(io.BytesIO(as_path(path).read_bytes()))


def _hidden_beside(out: pathlib.Path, kind: str) -> pathlib.Path:
  """`.NAME.KIND-PID-RANDOM` next to `out`: whose it is shows in its name."""
  return out.parent / f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_dirs(out: pathlib.Path) -> list[pathlib.Path]:
  """Removes the hidden folders that killed attempts at `out` left beside it, those whose process
  is gone: `.NAME.incomplete-PID-*` (an unfinished new folder) and `.NAME.old-PID-*` (the replaced
  folder, when the kill came between replace_dir's two renames; an older release named it
  `.NAME.old-RANDOM`, with no PID: always a leftover). Returns the removed folders. (A URI `out`
  gets no such folders: see temp_dir_beside.)"""
  removed = []
  if not is_local(out) or not out.parent.is_dir():
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
  that earlier, killed attempts at `out` left are removed first (remove_stale_dirs). For a URI
  `out` (an object store, no rename) it is a local temporary folder that replace_dir uploads."""
  if not is_local(out):
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-{os.getpid()}-"))
  out.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_dirs(out)
  tmp = _hidden_beside(out, "incomplete")
  tmp.mkdir()
  return tmp


def replace_dir(tmp: pathlib.Path, out: pathlib.Path, marker: str | None = None) -> None:
  """Renames the finished folder `tmp` (from temp_dir_beside) onto `out`, replacing any folder
  there: a reader sees the old folder or the new one whole (for an instant, neither).

  A URI `out` (an object store) cannot be renamed onto: the old folder's objects are deleted, then
  the files of `tmp` uploaded one by one (each whole), `marker` (a path relative to `tmp`) last,
  and `tmp` removed. A reader that sees the marker sees the whole new folder; a folder without
  its marker is unfinished (cut off) and must not be used."""
  if not is_local(out):
    _upload_dir(pathlib.Path(tmp), as_path(out), marker)
    shutil.rmtree(tmp, ignore_errors=True)
    return
  if out.exists():
    old = _hidden_beside(out, "old")  # removed below, or by the next remove_stale_dirs
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out)


def _upload_dir(tmp: pathlib.Path, out: epath.Path, marker: str | None) -> None:
  if out.exists():
    out.rmtree()  # first: no old object may pass for part of the new folder
  files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
  for name in sorted(files, key=lambda name: name == marker):  # stable: the marker goes last
    upload_file(tmp / name, out / name)


def path_problem(path, kind: str) -> str | None:
  """Why `path` is not a `kind` ("file" or "folder"): "does not exist", "is a folder, not a
  file" or "is a file, not a folder"; None when it is one. (On an object store a folder is a
  prefix that some object names start with.)"""
  if is_local(path):
    exists, is_dir = os.path.exists(path), os.path.isdir(path)
  else:
    exists, is_dir = as_path(path).exists(), as_path(path).is_dir()
  if not exists:
    return "does not exist"
  if kind == "file" and is_dir:
    return "is a folder, not a file"
  if kind == "folder" and not is_dir:
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
  work, and not at the end). A URI `out`: an object is written and deleted beside it (a bucket
  that cannot be written to fails here)."""
  if not is_local(out):
    _check_can_write_object(as_path(out), what)
    return
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


def _check_can_write_object(out: epath.Path, what: str) -> None:
  probe = out.parent / f".{out.name}.write-check-{os.getpid()}"
  try:
    probe.write_bytes(b"")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  # fsspec clients raise their own errors
    error = type(e) if isinstance(e, OSError) else OSError
    raise error(f"{what} {out} cannot be created: {out.parent} cannot be written to ({e}); "
                "choose another folder") from None


def sha256_file(path) -> str:
  """Hex sha256 of a file (any epath path), read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with as_path(path).open("rb") as f:
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
