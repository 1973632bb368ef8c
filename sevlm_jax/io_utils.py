"""Every output file is written whole or not at all: to a temporary name beside it, then renamed.

A reader (or a rerun after a kill) sees the old file or the complete new one, never a part.
Temporary names are `<name>.tmp<pid>`, so leftovers of a killed process are recognisable.
"""

import contextlib
import json
import os
from typing import Any, Iterator

import numpy as np


def temp_name(path: str | os.PathLike) -> str:
  return f"{os.fspath(path)}.tmp{os.getpid()}"


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
