"""Shards of a sweep: deterministic, disjoint slices of its members, each
trained by an ordinary single-process run (``scripts/sweep.py --shard I/N``).

The unit of work is a *block*: a shape group (:func:`vae.sweep.grouping.groups`),
or, when there are fewer groups than shards, an equal split of the largest
groups, so that every shard can get work. Blocks go to shards by the
longest-processing-time rule on an estimated cost (steps per epoch x epochs
x k x parameter count x members), ties broken by order: the plan depends
only on the config and N, so every shard computes the same plan alone.
Members never talk to each other; all shards write member directories
under one sweep directory, each member's files by exactly one shard (the
per-member lock guards against two).

Where the shard comes from: ``--shard I/N`` (I = 0..N-1), else the
scheduler's environment: SLURM job arrays (``SLURM_ARRAY_TASK_ID``,
``SLURM_ARRAY_TASK_COUNT``; the array must be 0-based, ``--array=0-(N-1)``)
or Kubernetes indexed Jobs (``JOB_COMPLETION_INDEX`` with the count in
``VAE_SHARD_COUNT``).
"""

from __future__ import annotations

import math
import os
import re
from typing import Mapping, NamedTuple

import ml_collections

from vae.sweep import grouping
from vae.errors import ConfigError


class Shard(NamedTuple):
  """Shard ``index`` of ``count`` (0 <= index < count)."""

  index: int
  count: int


def parse_shard(text: str) -> Shard:
  """``"I/N"`` (the ``--shard`` flag) -> ``Shard(I, N)``.

  Raises:
    ConfigError: not of that form, or not 0 <= I < N.
  """
  match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
  if not match or not 0 <= int(match[1]) < int(match[2]):
    raise ConfigError(f"--shard={text!r} is not accepted: I/N with "
                      "0 <= I < N, e.g. 0/2 and 1/2")
  return Shard(int(match[1]), int(match[2]))


def _shard_of(env: Mapping[str, str], index_var: str, count_var: str,
              accepted: str) -> Shard:
  """The shard that two environment variables name; a bad value is refused
  naming both variables and their values (not ``--shard``)."""
  index, count = env[index_var].strip(), env[count_var].strip()
  if not (index.isdigit() and count.isdigit()
          and 0 <= int(index) < int(count)):
    raise ConfigError(
        f"{index_var}={env[index_var]!r} with {count_var}={env[count_var]!r} "
        f"is not accepted: {accepted}")
  return Shard(int(index), int(count))


def shard_from_environment(env: Mapping[str, str] | None = None
                           ) -> Shard | None:
  """The shard a scheduler assigned this process, or None outside one.

  Raises:
    ConfigError: the variables are set but do not name a shard; the
      message names the variables, not ``--shard``.
  """
  env = os.environ if env is None else env
  if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
    return _shard_of(env, "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                     "integers with 0 <= task id < task count (a 0-based "
                     "array: sbatch --array=0-(N-1)), or pass --shard I/N")
  if "JOB_COMPLETION_INDEX" in env:
    if "VAE_SHARD_COUNT" not in env:
      raise ConfigError("JOB_COMPLETION_INDEX is set but VAE_SHARD_COUNT "
                        "is not: set it to the Job's completions")
    return _shard_of(env, "JOB_COMPLETION_INDEX", "VAE_SHARD_COUNT",
                     "integers with 0 <= index < count (VAE_SHARD_COUNT: "
                     "the Job's completions), or pass --shard I/N")
  return None


def member_cost(config: ml_collections.ConfigDict) -> float:
  """A relative training cost: epochs x k x the MLP's weight count (the
  steps per epoch are the sweep's, the same for every member)."""
  widths = (math.prod(config.data_shape), *config.hidden_sizes,
            2 * config.latent_dim)
  weights = sum(a * b for a, b in zip(widths, widths[1:])) * 2
  return float(config.num_epochs * config.num_samples * weights)


def blocks(config: ml_collections.ConfigDict, count: int
           ) -> list[list[tuple[str, ml_collections.ConfigDict]]]:
  """The sweep's members as blocks of one shape group each; groups are
  split into equal halves, largest first, while there are fewer blocks than
  ``count`` and a block has more than one member."""
  result = [list(g) for g in grouping.groups(grouping.members(config))]
  while len(result) < count:
    splittable = [b for b in result if len(b) > 1]
    if not splittable:
      break
    largest = max(splittable, key=lambda b: (
        sum(member_cost(c) for _, c in b), -result.index(b)))
    at = result.index(largest)
    half = (len(largest) + 1) // 2
    result[at:at + 1] = [largest[:half], largest[half:]]
  return result


def plan(config: ml_collections.ConfigDict, count: int
         ) -> list[list[list[tuple[str, ml_collections.ConfigDict]]]]:
  """The blocks of each of ``count`` shards (longest processing time
  first: each block, costliest first, to the least loaded shard)."""
  if count < 1:
    raise ConfigError(f"shard count {count} is not accepted: >= 1")
  work = blocks(config, count)
  order = sorted(range(len(work)), key=lambda i: (
      -sum(member_cost(c) for _, c in work[i]), i))
  load = [0.0] * count
  assigned: list[list[int]] = [[] for _ in range(count)]
  for i in order:
    target = min(range(count), key=lambda s: (load[s], s))
    assigned[target].append(i)
    load[target] += sum(member_cost(c) for _, c in work[i])
  return [[work[i] for i in sorted(indices)] for indices in assigned]
