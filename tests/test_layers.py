"""The vae package in layers (../shared/design/packages.md): concept
subpackages over a few foundation modules, and a DAG at two levels.

* Packages: a module imports only from a layer below its own (a package or
  a foundation module): no package imports one above it, so the packages
  form a DAG with no cycle.
* Modules: inside a package, a module imports only the modules listed
  before it.
* No ``vae`` import is written inside a function.

Read with ``ast``, so nothing is imported to check it.
``python tests/test_layers.py`` prints the import graph, layer by layer.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

VAE_DIR = Path(__file__).resolve().parents[1] / "vae"

# Layers, lowest first: a foundation module (None) or a package with its
# modules in order (a module may import the ones before it).
LAYERS: list[tuple[str, list[str] | None]] = [
    ("errors", None),
    ("inputs", None),
    ("rng", None),
    ("numerics", None),
    ("config", None),
    ("model", ["likelihoods", "dense", "networks", "core", "bounds",
               "diagnostics"]),
    ("data", ["datasets", "preprocess"]),
    ("store", ["runs", "provenance", "checkpoint", "restore"]),
    ("evals", ["evaluator", "evaluate"]),
    ("viz", ["images", "plots", "tensorboard", "figures"]),
    ("train", ["state", "optim", "objectives", "step", "devices", "program",
               "actions", "loop", "bench"]),
    ("sweep", ["grouping", "shards", "report", "figures", "runner",
               "launch"]),
    ("cli", None),
    ("__init__", None),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
ORDER = {(name, module): j for name, modules in LAYERS
         for j, module in enumerate(modules or [None])}
# Modules that are one cohesive thing and may exceed MAX_LINES.
COHESIVE = {"data/datasets.py": "every dataset source and file format, one "
                                "loader",
            "viz/plots.py": "one figure function per figure, their shared "
                            "drawing"}
MAX_LINES = 600


def node(path: Path, vae_dir: Path = VAE_DIR) -> tuple[str, str | None]:
  """(layer, module) of a file: ``("errors", None)``, ``("model", "core")``."""
  rel = path.relative_to(vae_dir)
  if len(rel.parts) == 1:
    return rel.stem, None
  return rel.parts[0], rel.stem


def target(dotted: str, names: list[str]) -> list[tuple[str, str | None]]:
  """The nodes ``from <dotted> import <names>`` reads (``dotted`` under vae)."""
  parts = dotted.split(".")[1:]  # drop "vae"
  if not parts:  # from vae import x: a foundation module or a package
    return [(n, None) for n in names]
  if len(parts) == 1:
    package = parts[0]
    if package in RANK and LAYERS[RANK[package]][1] is not None:
      # from vae.model import core: modules of the package (or its __init__)
      return [(package, n if n in (LAYERS[RANK[package]][1]) else None)
              for n in names]
    return [(package, None)]
  return [(parts[0], parts[1])]


def vae_imports(tree: ast.AST) -> list[tuple[tuple[str, str | None], int,
                                             bool]]:
  """(imported node, line, inside a function?) of every vae import."""
  found = []

  def visit(n, in_function):
    for child in ast.iter_child_nodes(n):
      inner = in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.ImportFrom) and child.module and (
          child.module == "vae" or child.module.startswith("vae.")):
        for t in target(child.module, [a.name for a in child.names]):
          found.append((t, child.lineno, in_function))
      elif isinstance(child, ast.Import):
        for alias in child.names:
          if alias.name == "vae" or alias.name.startswith("vae."):
            parts = alias.name.split(".")
            found.append(((parts[1] if len(parts) > 1 else "__init__",
                           parts[2] if len(parts) > 2 else None),
                          child.lineno, in_function))
      visit(child, inner)

  visit(tree, False)
  return found


def graph(vae_dir: Path = VAE_DIR):
  """Every module's vae imports, by (layer, module)."""
  edges = {}
  for p in sorted(vae_dir.rglob("*.py")):
    if p.name == "__init__.py" and p.parent != vae_dir:
      key = (p.parent.name, "__init__")
    else:
      key = node(p, vae_dir)
    edges[key] = vae_imports(ast.parse(p.read_text()))
  return edges


def _name(n: tuple[str, str | None]) -> str:
  return n[0] if n[1] is None else f"{n[0]}.{n[1]}"


def violations(edges) -> list[str]:
  """Every upward or same-package-later edge and every function-local
  import."""
  problems = []
  for source, imports in edges.items():
    layer, module = source
    if module == "__init__":  # a package's docstring-only __init__
      if imports:
        problems.append(f"vae/{layer}/__init__.py imports from vae: a "
                        "package's __init__ holds only its docstring")
      continue
    if source not in ORDER:
      problems.append(f"vae/{_name(source).replace('.', '/')}.py is in no "
                      "layer of tests/test_layers.py")
      continue
    for t, line, in_function in imports:
      where = f"vae/{_name(source).replace('.', '/')}.py:{line}"
      if in_function:
        problems.append(f"{where} imports vae.{_name(t)} inside a function")
      if t[0] not in RANK or (t[1] is not None and t not in ORDER):
        problems.append(f"{where} imports vae.{_name(t)}, which is in no "
                        "layer")
      elif t[0] == layer:
        if t[1] is None or ORDER[t] >= ORDER[source]:
          problems.append(f"{where} imports vae.{_name(t)}: not listed "
                          f"before {module} in {layer}")
      elif RANK[t[0]] > RANK[layer]:
        problems.append(f"{where} imports vae.{_name(t)}: {t[0]} is above "
                        f"{layer}")
  return problems


def package_edges(edges) -> set[tuple[str, str]]:
  """The package-level import graph: (importer, imported) layer pairs."""
  return {(s[0], t[0]) for s, imports in edges.items()
          for t, _, _ in imports if t[0] != s[0]}


def test_every_module_is_in_a_layer():
  modules = {k for k in graph() if k[1] != "__init__"}
  assert sorted(modules, key=str) == sorted(ORDER, key=str)


def test_imports_go_only_downward_and_never_inside_functions():
  assert violations(graph()) == []


def test_the_packages_form_a_dag():
  # Follows from the ranks; checked directly so a wrong table cannot hide a
  # cycle: no package reaches itself.
  pairs = package_edges(graph())
  reach = {a: {b for x, b in pairs if x == a} for a, _ in LAYERS}
  changed = True
  while changed:
    changed = False
    for a in reach:
      more = set().union(*(reach.get(b, set()) for b in reach[a]))
      if not more <= reach[a]:
        reach[a] |= more
        changed = True
  assert [a for a in reach if a in reach[a]] == []


def test_every_package_says_what_it_owns_and_may_import():
  for name, modules in LAYERS:
    if modules is None:
      continue
    doc = ast.get_docstring(ast.parse((VAE_DIR / name / "__init__.py")
                                      .read_text()))
    assert doc and "import" in doc, f"vae/{name}/__init__.py"


def _copy(tmp_path: Path) -> Path:
  root = tmp_path / "vae"
  for p in VAE_DIR.rglob("*.py"):
    dest = root / p.relative_to(VAE_DIR)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(p.read_text())
  return root


def test_a_back_edge_a_cycle_or_a_local_import_is_caught(tmp_path):
  root = _copy(tmp_path)
  # A package importing one above it (the old store -> viz: the report
  # drew), a module importing a later one of its own package, and a
  # function-local import as the old code closed its cycles with.
  restore = root / "store" / "restore.py"
  restore.write_text("from vae.viz import plots\n" + restore.read_text())
  core = root / "model" / "core.py"
  core.write_text("from vae.model import diagnostics\n" + core.read_text())
  plots = root / "viz" / "plots.py"
  plots.write_text(plots.read_text() + "\n\ndef _f():\n  from vae.train "
                   "import loop\n")
  found = violations(graph(root))
  assert any("store/restore.py:1 imports vae.viz.plots: viz is above store"
             in v for v in found)
  assert any("model/core.py:1 imports vae.model.diagnostics: not listed "
             "before core" in v for v in found)
  assert any("viz/plots.py" in v and "inside a function" in v for v in found)
  # That back edge makes a cycle between the two packages.
  pairs = package_edges(graph(root))
  assert ("store", "viz") in pairs and ("viz", "store") in pairs


def test_no_module_is_over_the_size_limit_unless_cohesive():
  sizes = {str(p.relative_to(VAE_DIR)): len(p.read_text().splitlines())
           for p in VAE_DIR.rglob("*.py")}
  assert {m: n for m, n in sizes.items()
          if n > MAX_LINES and m not in COHESIVE} == {}


def test_the_top_of_the_package_is_a_few_entries():
  entries = sorted(p.name for p in VAE_DIR.iterdir()
                   if p.name != "__pycache__")
  assert entries == ["__init__.py", "cli.py", "config.py", "data",
                     "errors.py", "evals", "inputs.py", "model",
                     "numerics.py", "rng.py", "store", "sweep", "train", "viz"]


def _sources() -> dict[str, str]:
  return {str(p.relative_to(VAE_DIR)): p.read_text()
          for p in VAE_DIR.rglob("*.py")}


def test_each_constant_and_the_log_weights_have_one_home():
  sources = _sources()
  # half log 2 pi: defined once, imported by every Gaussian log-density.
  assert [m for m, s in sources.items() if "math.log(2.0 * math.pi)" in s
          or "math.log(2 * math.pi)" in s or "np.log(2 * np.pi)" in s] == [
              "model/likelihoods.py"]
  # The importance weights log p(x|z) + log p(z) - log q(z|x) and the
  # standard estimator's log q: written once, in model/bounds.py.
  assert [m for m, s in sources.items()
          if "jnp.square(eps) - 0.5 * logvar" in s] == ["model/bounds.py"]
  assert [m for m, s in sources.items() if "log_prior -" in s
          or "+ log_prior(" in s] == ["model/bounds.py"]


def test_no_deprecated_alias_table_is_left():
  assert [m for m, s in _sources().items()
          if "_MOVED" in s or "errors.moved" in s] == []


def main() -> int:
  edges = graph()
  for name, modules in LAYERS:
    print(name)
    for module in modules or [None]:
      targets = sorted({_name(t) for t, _, _ in edges.get((name, module), [])})
      label = module or name
      print(f"  {label:<12} <- {', '.join(targets) or '(nothing in vae)'}")
  problems = violations(edges)
  print("\n".join(problems) if problems else
        "no upward edge, no function-local vae import: the packages and the "
        "modules in each form a DAG")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
