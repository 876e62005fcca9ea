"""The vae package in layers (../shared/design/layers.md): every module
imports only from a lower tier or an earlier module of its own tier, and no
``vae`` import is written inside a function.

Read with ``ast``, so nothing is imported to check it. Deprecated aliases
(a module's ``_MOVED`` table, resolved lazily by ``vae.errors.moved``) are
not edges: they keep old names working for one release without an import;
each is checked to resolve to an existing object.

``python tests/test_layers.py`` prints the import graph, tier by tier.
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

VAE_DIR = Path(__file__).resolve().parents[1] / "vae"

# Tiers, lowest first; within a tier, a module may import the ones before it.
TIERS = {
    "A foundations": ["errors", "inputs", "rng", "likelihoods", "data", "checkpoint",
                      "runs", "devices"],
    "B math": ["models", "core", "optim", "objectives", "bounds",
               "diagnostics", "images", "preprocess"],
    "C config and state": ["config", "state", "grouping", "shards",
                           "restore"],
    "D programs and sinks": ["step", "trainer", "tensorboard", "plots",
                             "evaluate"],
    "E drivers": ["train", "report", "figures", "sweep", "launch", "bench"],
    "F entry": ["cli", "__init__"],
}
ORDER = {m: (t, i) for t, (_, mods) in enumerate(TIERS.items())
         for i, m in enumerate(mods)}
# Modules that are one cohesive thing and may exceed MAX_LINES.
COHESIVE = {"data": "every dataset source and file format, one loader",
            "plots": "one figure function per figure, their shared drawing"}
MAX_LINES = 600


def vae_imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
  """(imported vae module, line, inside a function?) of every import."""
  found = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.ImportFrom) and child.module:
        if child.module == "vae":
          for alias in child.names:
            found.append((alias.name, child.lineno, in_function))
        elif child.module.startswith("vae."):
          found.append((child.module.split(".")[1], child.lineno, in_function))
      elif isinstance(child, ast.Import):
        for alias in child.names:
          if alias.name == "vae" or alias.name.startswith("vae."):
            name = alias.name.split(".")[1] if "." in alias.name else "__init__"
            found.append((name, child.lineno, in_function))
      visit(child, inner)

  visit(tree, False)
  return found


def graph(vae_dir: Path = VAE_DIR) -> dict[str, list[tuple[str, int, bool]]]:
  return {p.stem: vae_imports(ast.parse(p.read_text()))
          for p in sorted(vae_dir.glob("*.py"))}


def violations(edges: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
  """Every upward or same-tier-later edge and every function-local import."""
  problems = []
  for module, imports in edges.items():
    if module not in ORDER:
      problems.append(f"vae/{module}.py is in no tier of tests/test_layers.py")
      continue
    for target, line, in_function in imports:
      if in_function:
        problems.append(f"vae/{module}.py:{line} imports vae.{target} inside "
                        "a function")
      if target not in ORDER:
        problems.append(f"vae/{module}.py:{line} imports vae.{target}, which "
                        "is in no tier")
      elif ORDER[target] >= ORDER[module]:
        problems.append(f"vae/{module}.py:{line} imports vae.{target}: "
                        f"{_where(target)} is not below {_where(module)}")
  return problems


def _where(module: str) -> str:
  tier, index = ORDER[module]
  return f"{module} ({list(TIERS)[tier]}, #{index + 1})"


def test_every_module_is_in_a_tier():
  assert sorted(graph()) == sorted(ORDER)


def test_imports_go_only_downward_and_never_inside_functions():
  assert violations(graph()) == []


def test_a_back_edge_or_a_local_import_is_caught(tmp_path):
  # One of the old back-edges (train -> tensorboard -> plots -> train), and
  # a function-local import as the old code closed its cycles with.
  for p in VAE_DIR.glob("*.py"):
    (tmp_path / p.name).write_text(p.read_text())
  plots = tmp_path / "plots.py"
  plots.write_text(plots.read_text() + "\n\ndef _f():\n  from vae import train\n")
  core = tmp_path / "core.py"
  core.write_text("from vae import trainer\n" + core.read_text())
  found = violations(graph(tmp_path))
  assert any("plots.py" in v and "inside a function" in v for v in found)
  assert any("plots.py" in v and "vae.train:" in v for v in found)
  assert any("core.py:1 imports vae.trainer" in v for v in found)


def test_no_module_is_over_the_size_limit_unless_cohesive():
  sizes = {p.stem: len(p.read_text().splitlines())
           for p in VAE_DIR.glob("*.py")}
  assert {m: n for m, n in sizes.items()
          if n > MAX_LINES and m not in COHESIVE} == {}


def _moved_tables():
  for p in sorted(VAE_DIR.glob("*.py")):
    for node in ast.parse(p.read_text()).body:
      if (isinstance(node, ast.Assign) and len(node.targets) == 1
          and getattr(node.targets[0], "id", None) == "_MOVED"):
        yield p.stem, ast.literal_eval(node.value)


@pytest.mark.parametrize("module,table", list(_moved_tables()))
def test_deprecated_aliases_resolve_and_warn(module, table):
  mod = importlib.import_module(f"vae.{module}")
  defined_here = sorted(set(table) & set(vars(mod)))
  assert not defined_here, f"vae.{module} lists names it defines in _MOVED"
  for name, target in table.items():
    target_module, _, new_name = target.partition(":")
    expected = getattr(importlib.import_module(target_module),
                       new_name or name)
    with pytest.warns(DeprecationWarning, match=f"vae.{module}.{name} moved"):
      assert getattr(mod, name) is expected
  with pytest.raises(AttributeError):
    getattr(mod, "no_such_name")


def test_the_library_itself_uses_no_deprecated_alias():
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    for module in ORDER:
      importlib.import_module("vae" if module == "__init__" else f"vae.{module}")


def main() -> int:
  edges = graph()
  for tier, modules in TIERS.items():
    print(tier)
    for m in modules:
      targets = sorted({t for t, _, _ in edges.get(m, [])},
                       key=lambda t: ORDER.get(t, (99, 0)))
      print(f"  {m:<12} <- {', '.join(targets) or '(nothing in vae)'}")
  problems = violations(edges)
  print("\n".join(problems) if problems else
        "no upward edge, no function-local vae import: the graph is a DAG")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
