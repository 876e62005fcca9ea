"""The report of a sweep: one row per member read back from its directory,
the table, ``sweep.csv`` and ``sweep.json``. It draws nothing: the
rate-distortion figure of these rows is :mod:`vae.sweep.figures`'s.

All figures are nats per example.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import ml_collections

from vae import config as config_lib
from vae.store import checkpoint, runs
from vae.sweep import grouping

# The sweep table: the member, then the config fields whose values differ
# between its rows (the swept ones: beta and seed, objective and
# num_samples...), then these.
METRIC_COLUMNS = ("test_elbo", "test_recon", "test_kl", "seconds", "status")
TABLE_COLUMNS = ("member",) + METRIC_COLUMNS  # the columns every table has
EVAL_COLUMNS = ("nll", "active_units", "mutual_information", "collapse")
# Fields of a sweep row (member_row) that are not config fields.
_ROW_FIELDS = {"member", "family", "test_elbo", "test_recon", "test_kl",
               "rate", "distortion", "status", "best_epoch", "epochs",
               "seconds", *EVAL_COLUMNS}


def member_row(name: str, member: ml_collections.ConfigDict, axes: list[str],
               member_dir: Path) -> dict[str, Any]:
  """One row of the sweep table, read from the member's directory: its name
  and swept fields, its final test metrics (rate = test KL, distortion =
  test recon, nats per example), status, best epoch and the seconds its
  group spent training and evaluating it.

  ``status``: "finished" (all ``num_epochs`` recorded), "diverged"
  (``diverged.json``), "unfinished" (fewer epochs recorded) or "missing"
  (no run directory yet).
  """
  member_dir = Path(member_dir)
  records = runs.read_metrics(member_dir) if member_dir.is_dir() else []
  final = records[-1] if records else {}
  if (member_dir / runs.DIVERGED_FILE).is_file():
    status = "diverged"
  elif final.get("epoch") == member.num_epochs:
    status = "finished"
  elif records or (member_dir / runs.CONFIG_FILE).is_file():
    status = "unfinished"
  else:
    status = "missing"
  return {
      "member": name,
      "family": grouping.family(member),
      **{a: member[a] for a in axes},
      "beta": member.beta, "seed": member.seed,
      "objective": member.objective, "kl_schedule": member.kl_schedule,
      "free_bits": member.free_bits,
      "test_elbo": final.get("test_elbo"),
      "test_recon": final.get("test_recon"),
      "test_kl": final.get("test_kl"),
      "rate": final.get("test_kl"),
      "distortion": final.get("test_recon"),
      "status": status,
      "best_epoch": checkpoint.best_epoch_on_disk(
          member_dir / runs.CHECKPOINT_DIR),
      "epochs": final.get("epoch"),
      "seconds": sum(r.get("epoch_s", 0.0) + r.get("eval_s", 0.0)
                     for r in records),
  }


def sweep_rows(sweep_dir: str | Path,
               config: ml_collections.ConfigDict | None = None
               ) -> list[dict[str, Any]]:
  """One row per member (:func:`member_row`), read from the member
  directories, whatever process (or shard) trained them.

  The members and their order (group by group, as a sweep trains them)
  come from ``config`` or the directory's ``sweep_config.json``; without
  either, every subdirectory holding a run is a member (sorted by name) and
  the axes are the fields in which they differ.
  """
  sweep_dir = Path(sweep_dir)
  if config is None and (sweep_dir / runs.SWEEP_CONFIG_FILE).is_file():
    config = runs.load_sweep_config(sweep_dir)
  if config is not None:
    named = [m for group in grouping.groups(grouping.members(config))
             for m in group]
    axes = grouping.axes(config)
  else:
    named = [(d.name, runs.load_config(d))
             for d in runs.member_dirs(sweep_dir)]
    dicts = [config_lib.config_to_dict(c) for _, c in named]
    axes = sorted(k for k in dicts[0]
                  if any(d.get(k) != dicts[0][k] for d in dicts)) if dicts else []
  return [member_row(name, member, axes, sweep_dir / name)
          for name, member in named]


def varying_fields(rows: list[dict[str, Any]]) -> list[str]:
  """The config fields of the rows whose values are not all equal, in the
  rows' order (the swept fields first)."""
  fields = [k for k in dict.fromkeys(k for r in rows for k in r)
            if k not in _ROW_FIELDS]
  return [k for k in fields if len({repr(r.get(k)) for r in rows}) > 1]


def sweep_table(rows: list[dict[str, Any]]) -> str:
  """A plain-text table of the rows (nats per example): the member, the
  config fields that vary between the rows (:func:`varying_fields`), the
  final test metrics, and the evaluation's columns where rows have them."""
  columns = (("member", *varying_fields(rows)) + METRIC_COLUMNS
             + tuple(c for c in EVAL_COLUMNS if any(c in r for r in rows)))
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
  """``sweep.csv`` and ``sweep.json`` (the figure beside them is
  :func:`vae.sweep.figures.rate_distortion_figure`'s)."""
  workdir = Path(workdir)
  fields = [k for k in dict.fromkeys(k for r in rows for k in r)
            if k != "family"]
  csv_path = workdir / runs.REPORT_CSV
  tmp = csv_path.with_name(csv_path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: grouping.format_value(v)
                       if isinstance(v, (tuple, list)) else v
                       for k, v in r.items()})
  tmp.replace(csv_path)
  runs.write_json_atomic(workdir / runs.REPORT_JSON, json.loads(json.dumps(
      rows, default=lambda v: list(v) if isinstance(v, tuple) else str(v))))
  return [csv_path, workdir / runs.REPORT_JSON]
