"""Strict application of a declarative key map to a parameter subtree.

A key map is a list of `Rule`s: checkpoint key -> parameter path, through a
small transform (transpose, conv reshape, a slice of a fused qkv). Applying it
fails with a `CheckpointError` naming the key on anything missing, unexpected
or mis-shaped. The only tolerated gaps are explicit: rules in an optional
group (weights new in SEVLM that a checkpoint may lack) may be absent all
together, and keys matched by the map's `ignore` predicate (buffers, the
other tower of a two-tower file) are skipped.
"""

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from sevlm_jax.errors import CheckpointError

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  source: str  # checkpoint key
  target: Path  # path inside the parameter subtree
  transform: Callable[[np.ndarray], np.ndarray] = lambda x: x
  group: str | None = None  # optional group: all present, or all absent


@dataclasses.dataclass(frozen=True)
class KeyMap:
  rules: tuple[Rule, ...]
  ignore: Callable[[str], bool] = lambda key: False
  hint: str = ""  # appended to errors: what the map expects


# --- transforms ------------------------------------------------------------------


def transpose(x: np.ndarray) -> np.ndarray:
  """PyTorch Linear (out, in) -> Dense kernel (in, out)."""
  return np.ascontiguousarray(x.T)


def conv_to_hwio(x: np.ndarray) -> np.ndarray:
  """PyTorch Conv2d (out, in, h, w) -> Flax Conv kernel (h, w, in, out)."""
  return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)))


def chunk(index: int, parts: int, then: Callable[[np.ndarray], np.ndarray] = lambda x: x):
  """Part `index` of `parts` equal slices along axis 0 (fused in_proj q|k|v), then a transform."""
  def fn(x: np.ndarray) -> np.ndarray:
    if x.shape[0] % parts:
      raise ValueError(f"axis 0 of shape {x.shape} does not split into {parts} equal parts")
    n = x.shape[0] // parts
    return then(x[index * n:(index + 1) * n])
  return fn


# --- trees -------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _fmt(path: Path) -> str:
  return "/".join(path)


def _listing(keys: Iterable[str], limit: int = 5) -> str:
  keys = sorted(keys)
  more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
  return ", ".join(repr(k) for k in keys[:limit]) + more


def _more(keys: list[str], what: str) -> str:
  return f" ({len(keys)} keys {what}: {_listing(keys)})" if len(keys) > 1 else ""


# --- application ----------------------------------------------------------------------


def apply_key_map(tensors: Mapping[str, np.ndarray], key_map: KeyMap,
                  targets: Mapping[Path, Any], where: str, tree_name: str
                  ) -> tuple[dict[Path, np.ndarray], list[str]]:
  """Converts checkpoint tensors to parameter arrays for the paths in `targets`.

  targets: path -> current parameter (its shape is the expected one).
  Returns (converted arrays by path, names of optional groups the checkpoint lacks).
  """
  hint = f" {key_map.hint}" if key_map.hint else ""
  rule_targets = {r.target for r in key_map.rules}
  uncovered = set(targets) - rule_targets
  if uncovered:
    raise CheckpointError(f"{tree_name} parameters with no checkpoint key in the map:"
                          f" {_listing(_fmt(p) for p in uncovered)}; the parameters do not match"
                          " the model config")
  absent_groups = []
  groups = {r.group for r in key_map.rules if r.group}
  for g in sorted(groups):
    present = [r.source for r in key_map.rules if r.group == g and r.source in tensors]
    missing = [r.source for r in key_map.rules if r.group == g and r.source not in tensors]
    if present and missing:
      raise CheckpointError(f"{where}: missing key '{missing[0]}' ({len(missing)} of the {g}"
                            f" weights are absent while others are present: a partial"
                            f" checkpoint).{hint}")
    if missing:
      absent_groups.append(g)
  missing = [r.source for r in key_map.rules
             if r.source not in tensors and r.group not in absent_groups]
  if missing:
    raise CheckpointError(f"{where}: missing key '{missing[0]}'{_more(missing, 'missing')}.{hint}")
  used = {r.source for r in key_map.rules}
  unexpected = [k for k in tensors if k not in used and not key_map.ignore(k)]
  if unexpected:
    unexpected.sort()
    raise CheckpointError(f"{where}: unexpected key '{unexpected[0]}'"
                          f"{_more(unexpected, 'unexpected')}.{hint}")
  out = {}
  for r in key_map.rules:
    if r.group in absent_groups:
      continue
    src = np.asarray(tensors[r.source])
    try:
      value = np.asarray(r.transform(src), dtype=np.float32)
    except ValueError as e:
      raise CheckpointError(f"{where}: key '{r.source}' of shape {src.shape} cannot be converted"
                            f" for {tree_name}/{_fmt(r.target)}: {e}.{hint}") from None
    expected = tuple(np.shape(targets[r.target]))
    if value.shape != expected:
      gives = f", which gives {value.shape}," if value.shape != src.shape else ""
      raise CheckpointError(f"{where}: key '{r.source}' has shape {src.shape}{gives} for"
                            f" {tree_name}/{_fmt(r.target)}; expected {expected}.{hint}")
    out[r.target] = value
  return out, absent_groups
