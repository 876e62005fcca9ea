"""What produced a result, written as ``provenance.json`` beside it: the
CPU and its instruction sets, the XLA flags and thread pool, the JAX options
that change numbers, the devices, the dependency lock, package versions and
the code's git commit.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from vae import numerics

# The instruction-set extensions XLA's CPU code generation and the GEMM
# libraries (YNNPACK, XNNPACK, oneDNN) choose kernels by.
ISA_FLAGS = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512dq",
             "avx512bw", "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "sve", "sve2")
LOCK_FILE_NAME = "requirements.lock"
JAX_OPTIONS_RECORDED = ("jax_enable_x64", "jax_default_matmul_precision",
                        "jax_default_prng_impl", "jax_threefry_partitionable",
                        "jax_numpy_rank_promotion", "jax_platforms",
                        "jax_num_cpu_devices", "jax_debug_nans")


def cpu_description() -> tuple[str | None, list[str]]:
  """(CPU model name, the ISA_FLAGS it has), from /proc/cpuinfo (Linux), else
  ``platform.processor()`` and no flags."""
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return platform.processor() or None, []
  fields = {}
  for line in text.splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  flags = set((fields.get("flags") or fields.get("Features") or "").split())
  return (fields.get("model name") or fields.get("CPU part") or
          platform.processor() or None), [f for f in ISA_FLAGS if f in flags]


def lock_hash() -> str | None:
  """sha256 of the repository's dependency lock (None when not in a
  checkout, e.g. after ``pip install .``)."""
  path = Path(__file__).resolve().parents[2] / LOCK_FILE_NAME
  try:
    return hashlib.sha256(path.read_bytes()).hexdigest()
  except OSError:
    return None


def host_provenance() -> dict[str, Any]:
  """What on this host can change a result's bits: the CPU and its
  instruction sets, XLA_FLAGS, the JAX options this process changed, the
  devices, and the lock the environment was installed from."""
  import jax  # local: importing jax is slow and this module is light
  model, isa = cpu_description()
  devices = jax.devices()
  return {
      "cpu_model": model,
      "cpu_isa": isa,
      "cpu_count": os.cpu_count(),
      "usable_cores": len(os.sched_getaffinity(0)),
      # Products split by XLA's CPU thread pool (numerics.xla_cpu_threads).
      "xla_cpu_threads": numerics.xla_cpu_threads(),
      "nproc_env": os.environ.get("NPROC"),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # JAX options set from the environment, and the values of those that
      # can change numbers or devices (jax.config has no list of changes).
      "jax_env": {k: v for k, v in sorted(os.environ.items())
                  if k.startswith("JAX_")},
      "jax_config": {name: repr(getattr(jax.config, name, None))
                     for name in JAX_OPTIONS_RECORDED},
      "device_kinds": sorted({d.device_kind for d in devices}),
      "device_count": len(devices),
      "lock_sha256": lock_hash(),
  }


def provenance() -> dict[str, Any]:
  """What produced a result: versions, platform, devices, code commit."""
  import jax  # local: importing jax is slow and this module is light

  def version(dist: str) -> str | None:
    try:
      return metadata.version(dist)
    except metadata.PackageNotFoundError:
      return None

  code_dir = Path(__file__).resolve().parents[1]  # the vae package
  commit, dirty = None, None
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=code_dir,
                            capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "."],
                                cwd=code_dir.parent, capture_output=True,
                                text=True, check=True).stdout.strip())
  except (OSError, subprocess.CalledProcessError):
    pass
  return {
      **host_provenance(),
      "python": sys.version.split()[0],
      "versions": {d: version(d) for d in (
          "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
          "ml_collections", "tensorflow-datasets", "vae")},
      "platform": platform.platform(),
      "machine": platform.machine(),
      "jax_backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
      "git_commit": commit,
      "git_dirty": dirty,
      "argv": sys.argv,
  }
