"""Sweeps as compiled programs: a grid of runs trained together.

A sweep config is an ordinary run config plus a ``sweep`` field naming the
axes, e.g. ``sweep.beta = (0.1, 1, 8)`` and ``sweep.seed = (0, 1, 2)``; the
members are the product of the axes (first axis slowest), or the explicit
list ``sweep.members`` (a tuple of dicts) when given.

Members that differ only in traced settings (seed, beta, free bits, KL
schedule: :data:`vae.train.TRACED_FIELDS`) form one *group*: their
parameters and optimizer states are stacked on a leading axis and the whole
group trains as one compiled, vmapped program (:func:`vae.train.fit_members`),
its member axis sharded over every device. Axes that change shapes or static
settings (latent size, widths, likelihood, learning rate...) give one group
per distinct setting, run one after another; results merge into one table.

Each member is a first-class run in ``<sweep_dir>/<member-name>/``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections

from vae import config as config_lib
from vae import runs, train

REPORT_CSV = "sweep.csv"
REPORT_JSON = "sweep.json"
RATE_DISTORTION_PNG = "rate_distortion.png"


def _format_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "x".join(_format_value(v) for v in value)
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def member_name(assignment: dict[str, Any]) -> str:
  """Directory name of a member, e.g. ``beta0.5_seed1``."""
  return "_".join(f"{k}{_format_value(v)}" for k, v in assignment.items())


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
    by_signature.setdefault(train.static_signature(config), []).append(
        (name, config))
  return list(by_signature.values())


def run_sweep(config: ml_collections.ConfigDict, workdir: str | Path, *,
              devices=None, progress: bool = True,
              log: Callable[[str], None] = print,
              should_stop: Callable[[], str | None] | None = None
              ) -> list[dict[str, Any]]:
  """Train every member (resuming any that were interrupted); return rows.

  Args:
    config: a sweep config.
    workdir: the sweep directory; member ``name`` lives in ``workdir/name``.
    devices: devices to shard the member axis over (default: all).

  Returns:
    One row per member: name, the swept fields, final test metrics,
    rate/distortion, seconds, best epoch.
  """
  named = members(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  runs.write_json_atomic(workdir / "sweep_config.json",
                         runs.config_to_dict(config))
  devices = jax.devices() if devices is None else devices
  axes = _axes(config)
  rows = []
  for index, group in enumerate(groups(named)):
    names = [n for n, _ in group]
    desc = f"group {index + 1}: {len(group)} member(s)"
    log(f"{workdir}: {desc} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    summaries = train.fit_members([c for _, c in group],
                                  [workdir / n for n in names],
                                  devices=devices, progress=progress,
                                  desc=desc, log=log, should_stop=should_stop)
    for (name, member), summary in zip(group, summaries):
      rows.append(_row(name, member, axes, workdir / name, summary))
  if config.eval_k > 0:
    add_evaluation(rows, workdir, config.eval_k, log)
  return rows


EVAL_COLUMNS = ("nll", "active_units", "mutual_information", "collapse")


def add_evaluation(rows: list[dict[str, Any]], workdir: str | Path, k: int,
                   log: Callable[[str], None] = print) -> None:
  """Evaluate every finished VAE member (``vae.evaluate.evaluate_run``: its
  best checkpoint, k importance samples; writes its ``eval.json``) and add
  the NLL, active units, mutual information and collapse flag to its row."""
  from vae import evaluate  # local: evaluation is optional for a sweep
  for row in rows:
    if row["status"] != "finished" or row["objective"] != "vae":
      continue
    log(f"evaluating {row['member']} (k={k})")
    result = evaluate.evaluate_run(Path(workdir) / row["member"], k=k)
    row.update(nll=result["nll_nats"], active_units=result["active_units"],
               mutual_information=result["mutual_information"],
               collapse=bool(result["collapse"]["collapsed"]))


def _axes(config) -> list[str]:
  spec = config.sweep.to_dict()
  if "members" in spec:
    return sorted({k for m in spec["members"] for k in m} - {"name"})
  return list(spec)


def family(config) -> str:
  """Everything about a member but its beta and seed: members of one family
  are points of one rate-distortion curve (seeds averaged per beta)."""
  d = runs.config_to_dict(config)
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


def _row(name, member, axes, member_dir, summary) -> dict[str, Any]:
  records = runs.read_metrics(member_dir)
  final = summary["final"] or (records[-1] if records else {})
  return {
      "member": name,
      "family": family(member),
      **{a: member[a] for a in axes},
      "beta": member.beta, "seed": member.seed,
      "objective": member.objective, "kl_schedule": member.kl_schedule,
      "free_bits": member.free_bits,
      "test_elbo": final.get("test_elbo"),
      "test_recon": final.get("test_recon"),
      "test_kl": final.get("test_kl"),
      "rate": final.get("test_kl"),
      "distortion": final.get("test_recon"),
      "status": summary.get("status", "finished"),
      "best_epoch": summary["best_epoch"],
      "epochs": final.get("epoch"),
      "seconds": sum(r.get("epoch_s", 0.0) + r.get("eval_s", 0.0)
                     for r in records),
  }


TABLE_COLUMNS = ("member", "beta", "seed", "kl_schedule", "test_elbo",
                 "test_recon", "test_kl", "seconds", "status")


def table(rows: list[dict[str, Any]]) -> str:
  """A plain-text table of the rows (nats per example)."""
  columns = TABLE_COLUMNS + tuple(c for c in EVAL_COLUMNS
                                  if any(c in r for r in rows))
  widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows))
            for c in columns}
  lines = ["  ".join(f"{c:>{widths[c]}}" for c in columns)]
  for r in rows:
    lines.append("  ".join(f"{_cell(r.get(c)):>{widths[c]}}"
                           for c in columns))
  return "\n".join(lines)


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:.3f}" if math.isfinite(value) else str(value)
  return "" if value is None else str(value)


def write_report(rows: list[dict[str, Any]], workdir: str | Path) -> list[Path]:
  """``sweep.csv``, ``sweep.json`` and the rate-distortion plot."""
  workdir = Path(workdir)
  fields = [k for k in dict.fromkeys(k for r in rows for k in r)
            if k != "family"]
  csv_path = workdir / REPORT_CSV
  tmp = csv_path.with_name(csv_path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: _format_value(v) if isinstance(v, (tuple, list)) else v
                       for k, v in r.items()})
  tmp.replace(csv_path)
  runs.write_json_atomic(workdir / REPORT_JSON, json.loads(json.dumps(
      rows, default=lambda v: list(v) if isinstance(v, tuple) else str(v))))
  written = [csv_path, workdir / REPORT_JSON]
  vae_rows = [r for r in rows
              if r["objective"] == "vae" and r["status"] == "finished"]
  if vae_rows:
    from vae import plots  # matplotlib only when a plot is drawn
    plot_path = workdir / RATE_DISTORTION_PNG
    curve = main_family(vae_rows)
    left_out = [r["member"] for r in vae_rows if r not in curve]
    plots.rate_distortion(curve, plot_path, title=(
        f"{workdir.resolve().name}: {len(curve)} members, final epoch"
        + (f" (other settings left out: {', '.join(left_out)})"
           if left_out else "")))
    written.append(plot_path)
  return written
