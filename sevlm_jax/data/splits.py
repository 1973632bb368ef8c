"""ArtEmis's split of paintings into train / val / test (and 'rest').

Paintings with repetition >= 41 go to their own split 'rest'; the others, keyed by
art_style + painting and sorted, are split 85/5/10 the way sklearn's train_test_split does it
with random_state=2021 (a RandomState permutation; reimplemented here, so the same CSV gives
ArtEmis's own split). Every painting named in the input takes part in the split, even one
dropped later for a bad image, so one bad file never moves other paintings between splits.

A painting is one painting whatever Unicode normal form names it (annotations.painting_key): the
readers merge its spellings before the split, and annotations.check_disjoint proves that the
prepared data set holds each painting once.
"""

import math

import numpy as np

SPLITS = ("train", "val", "test", "rest")  # 'rest': heavily annotated paintings, set aside as ArtEmis does
ARTEMIS_SEED = 2021
ARTEMIS_SPLIT_LOADS = (0.85, 0.05, 0.1)
ARTEMIS_TOO_HIGH_REPETITION = 41


def artemis_split(keys, loads=ARTEMIS_SPLIT_LOADS, seed: int = ARTEMIS_SEED) -> dict:
  """key -> 'train' | 'val' | 'test', as ArtEmis's make_train_test_val_splits does it.

  ArtEmis calls sklearn's train_test_split twice with random_state=seed:
  first on the sorted unique keys with test_size=val+test (ceil of the
  fraction), then on that remainder with test_size=round(test * n) items.
  Each call takes the first n_test items of RandomState(seed).permutation(n)
  as its test part and the rest as its train part.
  """
  train_load, val_load, test_load = (float(x) for x in loads)
  if abs(train_load + val_load + test_load - 1.0) > 1e-9 or min(train_load, val_load, test_load) < 0:
    raise ValueError(f"split loads {loads} must be three non-negative fractions summing to 1")
  ids = sorted(set(keys))
  n = len(ids)
  if n == 0:
    return {}
  n_rest = min(n, math.ceil((val_load + test_load) * n))
  perm = np.random.RandomState(seed).permutation(n)
  rest = [ids[i] for i in perm[:n_rest]]
  out = {ids[i]: "train" for i in perm[n_rest:]}
  if val_load == 0:
    out.update({k: "test" for k in rest})
    return out
  n_test = min(len(rest), round(test_load * n))
  perm = np.random.RandomState(seed).permutation(len(rest))
  out.update({rest[i]: "test" for i in perm[:n_test]})
  out.update({rest[i]: "val" for i in perm[n_test:]})
  return out


def assign_splits(paintings: dict, *, seed: int, split_loads, too_high_repetition: int) -> None:
  """Fill Painting.split (kept when preassigned): 'rest' for heavy repetition, else ArtEmis's split."""
  todo = [p for p in paintings.values() if p.split is None]
  normal = []
  for p in todo:
    repetition = p.repetition if p.repetition is not None else p.rows
    if too_high_repetition > 0 and repetition >= too_high_repetition:
      p.split = "rest"
    else:
      normal.append(p)
  by_key = artemis_split([p.split_key for p in normal], split_loads, seed)
  for p in normal:
    p.split = by_key[p.split_key]
