"""The numerics modes of a process, as data, and the environment an entry
point sets for one before JAX starts.

A mode is a set of XLA flags that decide the bits of every result (with,
for ``portable``, the model's products written in the one layout XLA emits
itself). XLA reads them when it
starts its CPU backend (the first computation or device query), so only an
entry point can set them: a script calls :func:`configure` first thing;
library functions call :func:`check`, which reads the environment and
refuses a process that is not in the run's mode, and never writes it.
Importing this module or calling :func:`xla_flags`, :func:`environment` or
:func:`check` changes nothing.

Modes (``config.numerics``):

* ``"default"``: XLA's own CPU code is capped at AVX (no FMA). With FMA, LLVM
  contracts a multiply and an add into one fused multiply-add wherever two
  ops share a fused kernel, and XLA fuses differently for different member
  counts, so an optimizer step rounded differently in a sweep than alone.
  Without it every element-wise op rounds once, whatever the fusion. The
  matrix products still use the machine's fastest kernels (YNNPACK's,
  chosen at run time for the processor: results can differ in the last bits
  between an AVX2 and an AVX-512 machine).
* ``"portable"``: also turns YNNPACK and XNNPACK off and has XLA emit
  every matrix product itself (its tiled LLVM IR GEMM, under the same AVX
  cap) instead of calling Eigen's oneDNN kernels, which pick their code
  and their blocking (hence the order of the sums) from the processor's
  instruction sets and cache sizes. XLA's emitter takes only products of
  one canonical layout, so the model writes its products in that form in
  this mode (:func:`vae.model.dense.portable_matmul`; ``build_model`` reads
  ``config.numerics``). The summation order is then fixed by the program:
  the same bits on AVX2 and AVX-512 processors whatever their caches, and
  on any number of cores or threads (the README's reproducibility section
  says what was measured where). MLP architectures only: convolutions are
  library calls in either mode (refused by :func:`vae.config.validate`).
  Slower (``scripts/bench.py --numerics portable``).

In either mode ``NPROC=n`` in the environment sets the pool's size by hand
(``provenance.json`` records it as ``xla_cpu_threads``).
"""

from __future__ import annotations

import os
import platform
from typing import Mapping

from vae.errors import ConfigError

# The flags of each mode, as data: (flags on x86, flags elsewhere). Off x86
# the ISA names differ, so the AVX cap is left out there.
_AVX_CAP = ("--xla_cpu_max_isa=AVX",)
_NO_RUNTIME_KERNELS = ("--xla_cpu_experimental_ynn_fusion_type=",
                       "--xla_cpu_use_xnnpack=false",
                       # Products as XLA's own tiled LLVM IR (its emitter
                       # takes them only when Eigen is single-threaded),
                       # not Eigen's oneDNN kernels, which dispatch on the
                       # processor's ISA and cache sizes.
                       "--xla_cpu_multi_thread_eigen=false",
                       "--xla_backend_extra_options="
                       "xla_force_enable_experimental_llvm_ir_gemm")
FLAGS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": (_AVX_CAP, ()),
    "portable": (_AVX_CAP + _NO_RUNTIME_KERNELS, _NO_RUNTIME_KERNELS),
}
MODES = tuple(FLAGS)
_X86 = ("x86_64", "amd64", "i386", "i686")


def _check_mode(mode: str) -> None:
  if mode not in FLAGS:
    raise ConfigError(f"config.numerics={mode!r} is not accepted: one of "
                      f"{MODES}")


def xla_flags(mode: str, machine: str | None = None) -> tuple[str, ...]:
  """The ``XLA_FLAGS`` entries of numerics ``mode`` on ``machine`` (default:
  this one's ``platform.machine()``)."""
  _check_mode(mode)
  machine = platform.machine() if machine is None else machine
  on_x86, elsewhere = FLAGS[mode]
  return on_x86 if machine.lower() in _X86 else elsewhere


def xla_cpu_threads(environ: Mapping[str, str] | None = None) -> int:
  """The size of XLA's CPU thread pool: ``NPROC`` when set (XLA's CPU client
  reads it when it starts), else the cores the process may use.

  Results depend on it, not on the cores as such (measured on a 2-core
  AVX2 EPYC: a run with ``NPROC=2`` on one core gives the bits of a run on
  both cores, and ``NPROC=1`` on both cores those of one core): XLA and
  YNNPACK split a matrix product into blocks by the pool's threads.
  """
  environ = os.environ if environ is None else environ
  nproc = environ.get("NPROC", "").strip()
  if nproc.isdigit() and int(nproc) > 0:
    return int(nproc)
  return len(os.sched_getaffinity(0))


def environment(mode: str, environ: Mapping[str, str] | None = None
                ) -> dict[str, str]:
  """The variables to set (``XLA_FLAGS``) so that a process started with
  ``environ`` (default: this one's) runs in ``mode``: a pure function,
  nothing is written.

  Returns:
    Only the variables whose value must change (empty: already in mode).

  Raises:
    ConfigError: an unknown mode, or ``environ`` sets one of the mode's
      flags to another value.
  """
  environ = os.environ if environ is None else environ
  wanted = xla_flags(mode)
  current = environ.get("XLA_FLAGS", "").split()
  names = {f.split("=")[0]: f for f in current}
  missing = []
  for flag in wanted:
    name = flag.split("=")[0]
    if name in names and names[name] != flag:
      raise ConfigError(
          f"config.numerics={mode!r} needs {flag}, but XLA_FLAGS sets "
          f"{names[name]}: unset it, or drop it from XLA_FLAGS")
    if name not in names:
      missing.append(flag)
  return {"XLA_FLAGS": " ".join(current + missing)} if missing else {}


def _backend_started() -> bool:
  from jax._src import xla_bridge  # no public query of this
  return xla_bridge.backends_are_initialized()


def _missing(changes: Mapping[str, str]) -> str:
  """The flags of ``changes`` a process lacks, e.g. ``XLA_FLAGS=--x``."""
  have = set(os.environ.get("XLA_FLAGS", "").split())
  return "XLA_FLAGS=" + " ".join(f for f in changes["XLA_FLAGS"].split()
                                 if f not in have)


def _not_configured(mode: str, what: str) -> ConfigError:
  return ConfigError(
      f"config.numerics={mode!r} needs {what} before JAX starts its backend: "
      f"call vae.numerics.configure({mode!r}) first thing (the scripts do), "
      "or set it before starting Python")


def configure(mode: str) -> str:
  """For entry points (scripts, a test session's set-up): set ``XLA_FLAGS``
  in ``os.environ`` for numerics ``mode`` (see the module docstring),
  before JAX starts its backend; returns the resulting ``XLA_FLAGS``.
  Library functions never call it (they :func:`check`).

  Raises:
    ConfigError: an unknown mode; the environment sets one of the mode's
      flags to another value; or the backend started without them.
  """
  changes = environment(mode)
  if changes and _backend_started():
    raise _not_configured(mode, _missing(changes))
  os.environ.update(changes)
  return os.environ.get("XLA_FLAGS", "")


def check(mode: str) -> None:
  """For library functions: refuse a process that is not in numerics
  ``mode`` (a flag of the mode missing from ``XLA_FLAGS``); reads the
  environment, writes nothing.

  Raises:
    ConfigError: naming what is missing and how to set it.
  """
  changes = environment(mode)
  if changes:
    raise _not_configured(mode, _missing(changes))
