"""The package's import graph: arrows go down only, the house is at most 7 floors and its
root holds at most 8 modules; prediction never imports evaluation."""

import ast
import pathlib

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


def test_prediction_does_not_import_evaluation_or_training():
  graph = import_graph()
  for entry in ("sevlm_jax.inference.predictor", "sevlm_jax.inference.serve"):
    pulled = reachable(graph, entry)
    assert not {m for m in pulled if m.startswith(("sevlm_jax.evaluation", "sevlm_jax.training.loop"))}, entry


def test_models_data_and_weights_import_nothing_above_them():
  graph = import_graph()
  above = ("sevlm_jax.run", "sevlm_jax.main", "sevlm_jax.evaluation", "sevlm_jax.inference",
           "sevlm_jax.training.loop", "sevlm_jax.training.step", "sevlm_jax.benchmark")
  for m, deps in graph.items():
    if m.startswith(("sevlm_jax.models", "sevlm_jax.data", "sevlm_jax.weights")):
      assert not {d for d in deps if d.startswith(above)}, (m, deps)
