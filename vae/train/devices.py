"""Device placement: CPU cores as devices, the sharded member axis, and
:class:`PerDevice`, which runs one single-device program per device.

(The numerics mode of the process, XLA flags set before JAX starts, is
:mod:`vae.numerics`'s.)

A sweep's members are stacked on a leading axis. With several devices that
axis is sharded over a 1-D ``members`` mesh (:func:`member_sharding`), and
every device runs the *single-device* program on its own block of members
(:class:`PerDevice`), so a member's arithmetic is that of a standalone run.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from vae.errors import ConfigError


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
