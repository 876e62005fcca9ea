"""Device placement and process-level XLA set-up: the numerics mode, CPU
cores as devices, the sharded member axis, and :class:`PerDevice`, which
runs one single-device program per device.

Numerics modes (``config.numerics``), set through ``XLA_FLAGS`` before JAX
starts its CPU backend (:func:`configure_numerics`):

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

A sweep's members are stacked on a leading axis. With several devices that
axis is sharded over a 1-D ``members`` mesh (:func:`member_sharding`), and
every device runs the *single-device* program on its own block of members
(:class:`PerDevice`), so a member's arithmetic is that of a standalone run.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vae import runs
from vae.errors import ConfigError

NUMERICS = ("default", "portable")
_AVX_CAP = ("--xla_cpu_max_isa=AVX",)
_NO_RUNTIME_KERNELS = ("--xla_cpu_experimental_ynn_fusion_type=",
                       "--xla_cpu_use_xnnpack=false")
_X86 = ("x86_64", "amd64", "i386", "i686")
# XLA's CPU thread pool in portable mode: the size the references in
# docs/reference/ were produced with (2 usable cores, before it was pinned).
PORTABLE_CPU_THREADS = 2


def numerics_flags(mode: str) -> tuple[str, ...]:
  """The ``XLA_FLAGS`` entries of numerics ``mode`` on this machine (none
  off x86, where the ISA names differ)."""
  if mode not in NUMERICS:
    raise ConfigError(f"config.numerics={mode!r} is not accepted: one of "
                      f"{NUMERICS}")
  portable = _NO_RUNTIME_KERNELS if mode == "portable" else ()
  if platform.machine().lower() not in _X86:
    return portable
  return _AVX_CAP + portable


def _backend_started() -> bool:
  from jax._src import xla_bridge  # no public query of this
  return xla_bridge.backends_are_initialized()


def configure_numerics(mode: str) -> str:
  """Set ``XLA_FLAGS`` for numerics ``mode`` (see the module docstring);
  returns the resulting ``XLA_FLAGS``.

  Must run before JAX starts its backend (the first computation or device
  query); once started, the flags must already be in ``XLA_FLAGS``.

  Raises:
    ConfigError: an unknown mode; ``XLA_FLAGS`` sets one of the mode's
      flags to another value; or the backend started without them.
  """
  wanted = numerics_flags(mode)
  current = os.environ.get("XLA_FLAGS", "").split()
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
  if missing:
    if _backend_started():
      raise ConfigError(
          f"config.numerics={mode!r} needs XLA_FLAGS={' '.join(missing)} "
          "before JAX starts its backend, and it has already started: call "
          f"vae.devices.configure_numerics({mode!r}) first thing (the "
          "scripts do), or set XLA_FLAGS before starting Python")
    os.environ["XLA_FLAGS"] = " ".join(current + missing)
  if mode == "portable":
    _pin_cpu_threads(mode, PORTABLE_CPU_THREADS)
  return os.environ.get("XLA_FLAGS", "")


def _pin_cpu_threads(mode: str, threads: int) -> None:
  """Set ``NPROC`` (read by XLA's CPU client when it starts) to ``threads``.

  Raises:
    ConfigError: ``NPROC`` is set to another value, or the backend started
      with another pool size.
  """
  nproc = os.environ.get("NPROC")
  if nproc is not None and nproc.strip() != str(threads):
    raise ConfigError(
        f"config.numerics={mode!r} needs NPROC={threads} (XLA's CPU thread "
        f"pool; results depend on its size), but NPROC={nproc!r} is set: "
        "unset it")
  if nproc is None:
    if _backend_started() and runs.xla_cpu_threads() != threads:
      raise ConfigError(
          f"config.numerics={mode!r} needs NPROC={threads} before JAX starts "
          "its backend, and it has already started: call "
          f"vae.devices.configure_numerics({mode!r}) first thing (the "
          "scripts do), or set NPROC before starting Python")
    os.environ["NPROC"] = str(threads)


def available_memory_bytes() -> int | None:
  """Bytes of host memory available to a new allocation now: ``MemAvailable``
  of ``/proc/meminfo`` (Linux), else ``os.sysconf``'s available pages times
  the page size; None where neither is known."""
  try:
    for line in Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024  # the file's unit is kB
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def check_memory(needed_bytes: int, what: str, advice: str,
                 available: int | None = None) -> None:
  """Refuse a computation whose estimated memory exceeds what the host has
  available, before anything is compiled (XLA would abort the process).

  Args:
    needed_bytes: the estimate.
    what: what needs it and how it was estimated, for the message.
    advice: what to lower.
    available: bytes available (default: :func:`available_memory_bytes`;
      unknown: nothing is refused).

  Raises:
    ConfigError: ``needed_bytes > available``; the message names both in GiB.
  """
  available = available_memory_bytes() if available is None else available
  if available is not None and needed_bytes > available:
    raise ConfigError(
        f"{what} needs about {needed_bytes / 2**30:.1f} GiB, more than the "
        f"{available / 2**30:.1f} GiB of memory available; {advice}")


def use_cpu_cores_as_devices(count: int = 0) -> int:
  """Expose ``count`` CPU devices (0: one per core this process may use), so
  that a sweep's member axis is sharded over the cores as over accelerators.

  XLA's CPU backend runs one program's small operations on one core at a
  time; with the members split over one device per core, every core trains
  its share of them. A standalone run uses one device and is unaffected.
  Must be called before JAX starts its backends (the scripts call it first
  thing); ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, if set,
  wins. Returns the count asked for.
  """
  if count < 0:
    raise ConfigError(
        f"cpu_devices={count} is not accepted: 0 (one per core) or a positive "
        "count")
  cores = len(os.sched_getaffinity(0))
  if count > cores:
    # Measured on a 2-core AVX2 EPYC limited to one core: 2 devices on it
    # gave a member other bits than its standalone run (XLA sizes its CPU
    # thread pool for the devices, and the products split differently).
    raise ConfigError(
        f"cpu_devices={count} is not accepted: at most the {cores} core(s) "
        "this process may use (more devices than cores change how XLA splits "
        "the products, and so a member's bits), or 0 for one per core")
  count = count or cores
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", count)
  return count


def member_devices(num_members: int, devices) -> list | None:
  """The devices a group of ``num_members`` is sharded over: at most one per
  member (a lone run is not padded onto a second device), None for one."""
  if devices is None or min(len(devices), num_members) <= 1:
    return None
  return list(devices)[:num_members]


def member_sharding(devices):
  """(member-axis sharding, replicated sharding) over a 1-D mesh of
  ``devices``, or Nones for no sharding."""
  if devices is None:
    return None, None
  mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
  return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members")),
          jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def place(tree, sharding):
  """``tree`` put on ``sharding`` (unchanged when it is None)."""
  return tree if sharding is None else jax.device_put(tree, sharding)


class PerDevice:
  """A jitted member-vmapped function run on each device's block of members.

  Array arguments are either sharded over ``devices`` along their leading
  (member) axis with a :class:`jax.sharding.NamedSharding` (see
  :func:`place`) or replicated on them; other arguments are passed as they
  are. Each device runs the *single-device* program on its own block (the calls
  are dispatched asynchronously, so the devices run at once), and the
  results are assembled into global arrays sharded the same way.

  Why not one SPMD program (``jit`` of the sharded arrays, or ``shard_map``)?
  XLA simplifies the partitioned program's optimizer arithmetic differently
  (e.g. Adam's ``a / b / c`` becomes ``a / (b * c)``), so a member would
  differ from its standalone run in the last bits, and training amplifies
  such differences. The single-device program is the one a standalone run
  uses, whose results do not depend on the member count.
  """

  def __init__(self, fn, devices, per_device_fns=None):
    self.fn = fn
    self.sharding = member_sharding(list(devices))[0]
    self.num_devices = len(devices)
    # This process's devices (all of them on one host), in mesh order.
    self.local_devices = [d for d in devices
                          if d.process_index == jax.process_index()]
    self.fns = per_device_fns or [fn] * len(self.local_devices)

  @staticmethod
  def _block(x, device):
    if not isinstance(x, jax.Array):
      return x
    for shard in x.addressable_shards:
      if shard.device == device:
        return shard.data
    raise ValueError(f"no shard of an argument on {device}")

  def _global(self, *blocks):
    # Blocks are equal (the member count is padded to the device count).
    shape = (blocks[0].shape[0] * self.num_devices,) + blocks[0].shape[1:]
    return jax.make_array_from_single_device_arrays(shape, self.sharding,
                                                    list(blocks))

  def _blocks(self, args) -> list[list[Any]]:
    return [[jax.tree_util.tree_map(lambda x: self._block(x, device), a)
             for a in args] for device in self.local_devices]

  def compile(self, *args) -> "PerDevice":
    """Ahead-of-time compiled for these arguments (one program per device)."""
    return PerDevice(self.fn, self.sharding.mesh.devices.tolist(), [
        self.fn.lower(*block_args).compile()
        for block_args in self._blocks(args)])

  def __call__(self, *args):
    # Every block is taken before any call: a call may donate its blocks.
    outputs = [fn(*block_args)
               for fn, block_args in zip(self.fns, self._blocks(args))]
    return jax.tree_util.tree_map(self._global, *outputs)
