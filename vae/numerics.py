"""The numerics modes of a process, as data, and the environment an entry
point sets for one before JAX starts.

A mode is a set of XLA flags (and, for ``portable``, the size of XLA's CPU
thread pool) that decide the bits of every result. XLA reads them when it
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
* ``"portable"``: also turns YNNPACK and XNNPACK off, so matrix products
  are XLA's own code under the same AVX cap, the same instructions on any
  x86-64 machine with AVX, and pins XLA's CPU thread pool to
  :data:`PORTABLE_CPU_THREADS` threads (``NPROC``), since products are split
  into blocks by the pool's threads: the same bits on any number of cores.
  The aim: bitwise-identical runs on AVX2 and AVX-512 machines (see the
  README's reproducibility section for what was measured); slower
  (``scripts/bench.py --numerics portable``), and on a machine with more
  cores it uses only that many threads.

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
                       "--xla_cpu_use_xnnpack=false")
FLAGS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": (_AVX_CAP, ()),
    "portable": (_AVX_CAP + _NO_RUNTIME_KERNELS, _NO_RUNTIME_KERNELS),
}
# XLA's CPU thread pool of each mode (None: the usable cores, or NPROC).
# Portable: the size the references in docs/reference/ were produced with
# (2 usable cores, before it was pinned).
PORTABLE_CPU_THREADS = 2
CPU_THREADS: Mapping[str, int | None] = {"default": None,
                                         "portable": PORTABLE_CPU_THREADS}
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
  """The variables to set (``XLA_FLAGS``, and ``NPROC`` for a pinned pool)
  so that a process started with ``environ`` (default: this one's) runs in
  ``mode``: a pure function, nothing is written.

  Returns:
    Only the variables whose value must change (empty: already in mode).

  Raises:
    ConfigError: an unknown mode, or ``environ`` sets one of the mode's
      flags (or ``NPROC``) to another value.
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
  changes = {"XLA_FLAGS": " ".join(current + missing)} if missing else {}
  threads = CPU_THREADS[mode]
  if threads is not None:
    nproc = environ.get("NPROC")
    if nproc is not None and nproc.strip() != str(threads):
      raise ConfigError(
          f"config.numerics={mode!r} needs NPROC={threads} (XLA's CPU thread "
          f"pool; results depend on its size), but NPROC={nproc!r} is set: "
          "unset it")
    if nproc is None:
      changes["NPROC"] = str(threads)
  return changes


def _backend_started() -> bool:
  from jax._src import xla_bridge  # no public query of this
  return xla_bridge.backends_are_initialized()


def _missing(changes: Mapping[str, str]) -> str:
  """The variables of ``changes`` a process lacks, e.g. ``XLA_FLAGS=--x``."""
  if "XLA_FLAGS" in changes:
    have = set(os.environ.get("XLA_FLAGS", "").split())
    return "XLA_FLAGS=" + " ".join(f for f in changes["XLA_FLAGS"].split()
                                   if f not in have)
  return f"NPROC={changes['NPROC']}"


def _not_configured(mode: str, what: str) -> ConfigError:
  return ConfigError(
      f"config.numerics={mode!r} needs {what} before JAX starts its backend: "
      f"call vae.numerics.configure({mode!r}) first thing (the scripts do), "
      "or set it before starting Python")


def configure(mode: str) -> str:
  """For entry points (scripts, a test session's set-up): set ``XLA_FLAGS``
  and ``NPROC`` in ``os.environ`` for numerics ``mode`` (see the module
  docstring), before JAX starts its backend; returns the resulting
  ``XLA_FLAGS``. Library functions never call it (they :func:`check`).

  Raises:
    ConfigError: an unknown mode; the environment sets one of the mode's
      flags to another value; or the backend started without them (or with
      another thread-pool size).
  """
  changes = environment(mode)
  if changes and _backend_started():
    pinned = CPU_THREADS[mode]
    if "XLA_FLAGS" in changes or xla_cpu_threads() != pinned:
      raise _not_configured(mode, _missing(changes))
  os.environ.update(changes)
  return os.environ.get("XLA_FLAGS", "")


def check(mode: str) -> None:
  """For library functions: refuse a process that is not in numerics
  ``mode`` (a flag of the mode missing from ``XLA_FLAGS``, or another
  thread-pool size); reads the environment, writes nothing.

  Raises:
    ConfigError: naming what is missing and how to set it.
  """
  changes = environment(mode)
  pinned = CPU_THREADS[mode]
  if "XLA_FLAGS" in changes or (pinned is not None
                                and xla_cpu_threads() != pinned):
    raise _not_configured(mode, _missing(changes))
