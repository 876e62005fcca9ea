"""A sweep's members, which of them share a compiled program, and which
share a curve.

A sweep config is an ordinary run config plus a ``sweep`` field naming the
axes, e.g. ``sweep.beta = (0.1, 1, 8)`` and ``sweep.seed = (0, 1, 2)``; the
members are the product of the axes (in the order a ConfigDict keeps its
keys: alphabetical), or the explicit list ``sweep.members`` (a tuple of
dicts, each optionally with a directory ``name``) when given.

* :func:`groups`: members with equal static signatures
  (:func:`vae.train.program.static_signature`: the config without its traced
  fields) form one *group* and train as one compiled, vmapped program.
* :func:`family`: the config without beta and seed. Members of one family
  are points of one rate-distortion curve (seeds averaged per beta).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import ml_collections

from vae import config as config_lib
from vae.train.program import static_signature


def format_value(value: Any) -> str:
  """A swept value as text: ``0.5`` -> "0.5", ``(64, 32)`` -> "64x32"."""
  if isinstance(value, (tuple, list)):
    return "x".join(format_value(v) for v in value)
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def member_name(assignment: dict[str, Any]) -> str:
  """Directory name of a member, e.g. ``beta0.5_seed1``."""
  return "_".join(f"{k}{format_value(v)}" for k, v in assignment.items())


def members(config: ml_collections.ConfigDict
            ) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, member config) for every member of a sweep config.

  Raises:
    config_lib.ConfigError: no ``sweep`` field, an empty or unknown axis,
      duplicate members.
  """
  if "sweep" not in config:
    raise config_lib.ConfigError(
        "config.sweep is missing: a sweep config names its axes, e.g. "
        "config.sweep = ml_collections.ConfigDict({'beta': (0.5, 1.0)})")
  spec = config.sweep.to_dict() if hasattr(config.sweep, "to_dict") else dict(
      config.sweep)
  base = ml_collections.ConfigDict(config.to_dict())
  del base["sweep"]
  known = set(base.keys())
  if "members" in spec:
    # Each member: config fields to set, and optionally its directory "name".
    assignments = [dict(m) for m in spec.pop("members")]
    if spec:
      raise config_lib.ConfigError(
          f"config.sweep has both 'members' and axes {sorted(spec)}: give one")
  else:
    for axis, values in spec.items():
      if not isinstance(values, (tuple, list)) or not values:
        raise config_lib.ConfigError(
            f"config.sweep.{axis}={values!r} is not accepted: a non-empty "
            "tuple of values")
    assignments = [dict(zip(spec, combo))
                   for combo in itertools.product(*spec.values())]
  if not assignments:
    raise config_lib.ConfigError("config.sweep has no members")
  result, seen = [], set()
  for assignment in assignments:
    explicit_name = assignment.pop("name", None)
    for field in assignment:
      if field not in known:
        raise config_lib.ConfigError(
            f"config.sweep.{field} is not accepted: sweep axes are config "
            f"fields; known: {sorted(known)}")
    name = explicit_name or member_name(assignment)
    if name in seen:
      raise config_lib.ConfigError(f"config.sweep repeats the member {name!r}")
    seen.add(name)
    member = ml_collections.ConfigDict(base.to_dict())
    for field, value in assignment.items():
      member[field] = tuple(value) if isinstance(value, list) else value
    result.append((name, config_lib.validate(member)))
  return result


def groups(named: list[tuple[str, ml_collections.ConfigDict]]
           ) -> list[list[tuple[str, ml_collections.ConfigDict]]]:
  """Members split by static settings, in first-appearance order."""
  by_signature: dict[str, list] = {}
  for name, config in named:
    by_signature.setdefault(static_signature(config), []).append(
        (name, config))
  return list(by_signature.values())


def axes(config) -> list[str]:
  """The swept fields of a sweep config (its axes, or every field its
  explicit members set), in order."""
  spec = config.sweep.to_dict()
  if "members" in spec:
    return sorted({k for m in spec["members"] for k in m} - {"name"})
  return list(spec)


def family(config) -> str:
  """Everything about a member but its beta and seed: members of one family
  are points of one rate-distortion curve (seeds averaged per beta)."""
  d = config_lib.config_to_dict(config)
  for field in ("beta", "seed", "sweep"):
    d.pop(field, None)
  return json.dumps(d, sort_keys=True)


def main_family(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The rows of the most common family (first one on ties)."""
  counts: dict[str, int] = {}
  for r in rows:
    counts[r["family"]] = counts.get(r["family"], 0) + 1
  top = max(counts, key=lambda f: (counts[f], -list(counts).index(f)))
  return [r for r in rows if r["family"] == top]
