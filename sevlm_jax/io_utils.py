"""Small file helpers: every output file is written whole or not at all."""

import json
import os
from typing import Any


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary file beside `path`, then renames it into place."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
