"""The saved traces of an evaluation's first images: <workdir>/trace_<split>.npz.

For each traced image (the report's gallery: the first eval.trace_images by index) the
explanation's words with their attention maps over the image patches, and its BPE tokens with
the VAD head's predictions (see inference.trace). Maps and VAD are float16 (a 14x14 map of 600
images with 15 words each is 3.5 MB) and concatenated over images, with counts to split them;
words and tokens are strings joined by a separator that no text holds. Plain arrays only: the
file loads without pickle.
"""

import io
from typing import Any

import numpy as np

from sevlm_jax import io_utils

SEP = "\x1f"  # the ASCII unit separator between words or tokens


def save_traces(path: str, entries: dict[int, dict[str, Any]]) -> None:
  """entries: image_index -> inference.trace.trace_entry's dict. Written atomically."""
  order = sorted(entries)
  rows = [entries[i] for i in order]
  grid = next((r["attention"].shape[1] for r in rows if r["attention"].size), 0)
  arrays = {
      "image_index": np.asarray(order, np.int32),
      "word_count": np.asarray([len(r["words"]) for r in rows], np.int32),
      "token_count": np.asarray([len(r["tokens"]) for r in rows], np.int32),
      "words": np.asarray([SEP.join(r["words"]) for r in rows], dtype=str),
      "tokens": np.asarray([SEP.join(r["tokens"]) for r in rows], dtype=str),
      "attention": np.concatenate([r["attention"].reshape(-1, grid, grid) for r in rows] or
                                  [np.zeros((0, grid, grid))]).astype(np.float16),
      "vad": np.concatenate([r["vad"].reshape(-1, 3) for r in rows] or
                            [np.zeros((0, 3))]).astype(np.float16),
  }
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  io_utils.write_bytes_atomic(path, buf.getvalue())


def _split(text: str, count: int) -> list[str]:
  return text.split(SEP) if count else []


def load_traces(path: str) -> dict[int, dict[str, Any]]:
  """image_index -> {'words', 'attention' float32 WxGxG, 'tokens', 'vad' float32 Tx3}."""
  with io_utils.as_path(path).open("rb") as file, np.load(file, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  out = {}
  word_end = np.cumsum(data["word_count"])
  token_end = np.cumsum(data["token_count"])
  for k, index in enumerate(data["image_index"]):
    w0, t0 = word_end[k] - data["word_count"][k], token_end[k] - data["token_count"][k]
    out[int(index)] = {
        "words": _split(str(data["words"][k]), data["word_count"][k]),
        "attention": data["attention"][w0:word_end[k]].astype(np.float32),
        "tokens": _split(str(data["tokens"][k]), data["token_count"][k]),
        "vad": data["vad"][t0:token_end[k]].astype(np.float32),
    }
  return out
