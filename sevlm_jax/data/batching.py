"""Fixed-size batches: the last one padded, so that a jitted function compiles once for all."""

from typing import Iterator

import numpy as np


def batch_bounds(num_rows: int, batch_size: int) -> Iterator[tuple[int, int]]:
  """(start, stop) of each batch of `num_rows` rows; the last may be short."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  for start in range(0, num_rows, batch_size):
    yield start, min(start + batch_size, num_rows)


def pad_rows(x: np.ndarray, size: int, fill=0) -> np.ndarray:
  """`x` with rows of `fill` appended along axis 0 up to `size` rows."""
  x = np.asarray(x)
  if len(x) > size:
    raise ValueError(f"{len(x)} rows do not fit a batch of {size}")
  pad = np.full((size - len(x),) + x.shape[1:], fill, x.dtype)
  return np.concatenate([x, pad]) if len(pad) else x
