"""The numerics modes (vae/numerics.py): flags as data, the environment an
entry point sets, and library functions that only read it."""

import ast
import os
from pathlib import Path

import pytest

from vae import numerics
from vae.errors import ConfigError

VAE_DIR = Path(__file__).resolve().parents[1] / "vae"


def test_the_flags_of_each_mode_are_data():
  assert numerics.MODES == ("default", "portable")
  assert numerics.xla_flags("default", "x86_64") == ("--xla_cpu_max_isa=AVX",)
  assert numerics.xla_flags("portable", "x86_64") == (
      "--xla_cpu_max_isa=AVX", "--xla_cpu_experimental_ynn_fusion_type=",
      "--xla_cpu_use_xnnpack=false", "--xla_cpu_multi_thread_eigen=false",
      "--xla_backend_extra_options="
      "xla_force_enable_experimental_llvm_ir_gemm")
  # Off x86 the ISA cap is left out (its names differ there).
  assert numerics.xla_flags("default", "aarch64") == ()
  assert numerics.xla_flags("portable", "aarch64") == (
      numerics.xla_flags("portable", "x86_64")[1:])
  with pytest.raises(ConfigError, match="config.numerics='fast' is not "
                     "accepted: one of \\('default', 'portable'\\)"):
    numerics.xla_flags("fast")


def test_environment_is_a_pure_function_of_the_environment_it_is_given():
  before = dict(os.environ)
  portable = numerics.xla_flags("portable")
  assert numerics.environment("portable", {}) == {
      "XLA_FLAGS": " ".join(portable)}
  assert numerics.environment("portable", {"NPROC": "3"}) == {
      "XLA_FLAGS": " ".join(portable)}  # any thread pool: no pin
  default = numerics.xla_flags("default")
  assert numerics.environment("default", {"XLA_FLAGS": "--other=1"}) == (
      {"XLA_FLAGS": " ".join(("--other=1",) + default)} if default else {})
  assert numerics.environment("portable",
                              {"XLA_FLAGS": " ".join(portable)}) == {}
  if default:
    with pytest.raises(ConfigError, match="but XLA_FLAGS sets "
                       "--xla_cpu_max_isa=AVX2"):
      numerics.environment("default", {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2"})
  assert dict(os.environ) == before


def test_check_refuses_a_process_not_in_the_mode_and_writes_nothing(
    monkeypatch):
  numerics.check("default")  # conftest configured the test session
  if not numerics.xla_flags("default"):
    pytest.skip("no XLA flags in the default mode off x86")
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(ConfigError, match="needs XLA_FLAGS=--xla_cpu_max_isa="
                     "AVX before JAX starts.*vae.numerics.configure"):
    numerics.check("default")
  assert os.environ["XLA_FLAGS"] == ""


def _writes_environ(node: ast.AST) -> bool:
  """Whether ``node`` assigns to, updates or deletes ``os.environ`` (or
  calls ``os.putenv``)."""
  def is_environ(n):
    return (isinstance(n, ast.Attribute) and n.attr == "environ"
            and isinstance(n.value, ast.Name) and n.value.id == "os")
  if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
    targets = node.targets if not isinstance(node, ast.AugAssign) else [
        node.target]
    return any(isinstance(t, ast.Subscript) and is_environ(t.value)
               for t in targets)
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
    f = node.func
    return ((is_environ(f.value) and f.attr in (
        "update", "setdefault", "pop", "clear", "__setitem__"))
            or (isinstance(f.value, ast.Name) and f.value.id == "os"
                and f.attr in ("putenv", "unsetenv")))
  return False


def test_only_the_entry_points_configure_writes_the_environment():
  writers = {}
  for path in sorted(VAE_DIR.rglob("*.py")):
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
      if isinstance(fn, ast.FunctionDef):
        if any(_writes_environ(n) for n in ast.walk(fn)):
          writers.setdefault(str(path.relative_to(VAE_DIR)), set()).add(
              fn.name)
    top = [n for n in tree.body if not isinstance(
        n, (ast.FunctionDef, ast.ClassDef))]
    if any(_writes_environ(n) for t in top for n in ast.walk(t)):
      writers.setdefault(str(path.relative_to(VAE_DIR)), set()).add(
          "<module>")
  assert writers == {"numerics.py": {"configure"}}


def test_the_writer_check_sees_a_library_write(tmp_path):
  # The check above can fail: the old devices.configure_numerics wrote
  # os.environ from a library function.
  tree = ast.parse("import os\ndef f():\n  os.environ['XLA_FLAGS'] = 'x'\n"
                   "def g():\n  os.environ.update(NPROC='2')\n")
  assert [fn.name for fn in tree.body[1:]
          if any(_writes_environ(n) for n in ast.walk(fn))] == ["f", "g"]
