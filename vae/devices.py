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
* ``"portable"``: also turns YNNPACK and XNNPACK off and has XLA emit
  every matrix product itself (its tiled LLVM IR GEMM, under the same AVX
  cap) instead of calling Eigen's oneDNN kernels, which pick their code
  and their blocking (hence the order of the sums) from the processor's
  instruction sets and cache sizes. XLA's emitter takes only products of
  one canonical layout, so the model writes its products in that form in
  this mode (:func:`vae.models.portable_matmul`; ``build_model`` reads
  ``config.numerics``). The summation order is then fixed by the program:
  the same bits on AVX2 and AVX-512 processors whatever their caches, and
  on any number of cores or threads (the README's reproducibility section
  says what was measured where). MLP architectures only: convolutions are
  library calls in either mode (refused by :func:`vae.config.validate`).
  Slower (``scripts/bench.py --numerics portable``).

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
from typing import Any

import jax
import numpy as np

from vae.errors import ConfigError

NUMERICS = ("default", "portable")
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
_X86 = ("x86_64", "amd64", "i386", "i686")


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
  return os.environ.get("XLA_FLAGS", "")


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
