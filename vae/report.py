"""Every text, CSV and JSON report of the library, and the sweep's
rate-distortion figure: the summary table of a run, the sweep table and its
files, and the evaluation table.

All figures are nats per example.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from vae import checkpoint, grouping, plots, runs
from vae import config as config_lib

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


def summary_table(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
  """A plain-text table of the final (and best) epoch, in nats per example."""
  cols = ("loss", "recon", "kl", "elbo", "bits_per_dim")
  lines = [f"{'':>18}" + "".join(f"{c:>14}" for c in cols)]
  final = summary["final"]
  rows = [(f"train (epoch {final['epoch']})", "train", final),
          (f"test (epoch {final['epoch']})", "test", final)]
  best = summary.get("best_epoch")
  by_epoch = {r["epoch"]: r for r in records}
  if best is not None and best != final["epoch"] and best in by_epoch:
    rows.append((f"test (best, {best})", "test", by_epoch[best]))
  for label, split, rec in rows:
    lines.append(f"{label:>18}" + "".join(
        f"{rec[f'{split}_{c}']:>14.4f}" for c in cols))
  total = sum(r.get("epoch_s", 0.0) + r.get("eval_s", 0.0) for r in records)
  lines.append(f"nats per example; {len(records)} epochs, "
               f"{total:.1f} s of training and evaluation in metrics.jsonl")
  return "\n".join(lines)


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
    config = config_lib.load_sweep_config(sweep_dir)
  if config is not None:
    named = [m for group in grouping.groups(grouping.members(config))
             for m in group]
    axes = grouping.axes(config)
  else:
    named = [(d.name, config_lib.load_config(d))
             for d in runs.member_dirs(sweep_dir)]
    dicts = [runs.config_to_dict(c) for _, c in named]
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
  """``sweep.csv``, ``sweep.json`` and the rate-distortion plot."""
  workdir = Path(workdir)
  fields = [k for k in dict.fromkeys(k for r in rows for k in r)
            if k != "family"]
  csv_path = workdir / runs.REPORT_CSV
  tmp = csv_path.with_name(csv_path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: grouping.format_value(v) if isinstance(v, (tuple, list)) else v
                       for k, v in r.items()})
  tmp.replace(csv_path)
  runs.write_json_atomic(workdir / runs.REPORT_JSON, json.loads(json.dumps(
      rows, default=lambda v: list(v) if isinstance(v, tuple) else str(v))))
  written = [csv_path, workdir / runs.REPORT_JSON]
  plot_path = rate_distortion_figure(rows, workdir)
  if plot_path is not None:
    written.append(plot_path)
  return written


def rate_distortion_figure(rows: list[dict[str, Any]], workdir: str | Path
                           ) -> Path | None:
  """The sweep's ``rate_distortion.png``: the finished VAE members of its
  main family (:func:`vae.grouping.main_family`; the others are named in
  the title), at their final epoch. None when no VAE member finished.

  The one rate-distortion figure of a sweep: ``scripts/sweep.py`` and
  ``scripts/plot.py`` both draw it from these rows.
  """
  workdir = Path(workdir)
  vae_rows = [r for r in rows
              if r["objective"] == "vae" and r["status"] == "finished"]
  if not vae_rows:
    return None
  plot_path = workdir / runs.RATE_DISTORTION_PNG
  curve = grouping.main_family(vae_rows)
  left_out = [r["member"] for r in vae_rows if r not in curve]
  plots.rate_distortion(curve, plot_path, title=(
      f"{workdir.resolve().name}: {len(curve)} members, final epoch"
      + (f" (other settings left out: {', '.join(left_out)})"
         if left_out else "")))
  return plot_path


_COLUMNS = (  # (header, result field, format)
    ("NLL", "nll_nats", "{:.2f}"),
    ("bits/dim", "nll_bits_per_dim", "{:.4f}"),
    ("ELBO", "elbo", "{:.2f}"),
    ("rate", "rate", "{:.2f}"),
    ("distortion", "distortion", "{:.2f}"),
    ("MI", "mutual_information", "{:.2f}"),
)


def evaluation_table(results: Sequence[tuple[str, dict[str, Any] | str]]) -> str:
  """A plain-text table, one row per (name, result or error message).

  Columns: checkpoint epoch, N, k, NLL (nats, -IWAE bound), bits/dim, ELBO,
  rate, distortion, active units, MI, collapse flag; then one line per run
  with its diagnosis (or its error) and notes (a note every run shares is
  printed once).
  """
  width = max([3] + [len(name) for name, _ in results])
  head = (f"{'run':<{width}} {'epoch':>5} {'N':>6} {'k':>5}" +
          "".join(f" {c:>10}" for c, _, _ in _COLUMNS[:5]) +
          f" {'AU':>6} {_COLUMNS[5][0]:>6} {'collapse':>8}")
  lines = [head]
  for name, r in results:
    if isinstance(r, str):
      lines.append(f"{name:<{width}} error")
      continue
    lines.append(
        f"{name:<{width}} {r['epoch']:>5} {r['num_examples']:>6} {r['k']:>5}" +
        "".join(f" {fmt.format(r[key]):>10}" for _, key, fmt in _COLUMNS[:5]) +
        f" {str(r['active_units']) + '/' + str(r['num_latents']):>6}"
        f" {r['mutual_information']:>6.2f}"
        f" {'YES' if r['collapse']['collapsed'] else 'no':>8}")
  lines.append("nats per example; NLL = -IWAE bound (k importance samples); "
               "ELBO = -(rate + distortion); AU = active units; MI in nats.")
  done = [r for _, r in results if not isinstance(r, str)]
  shared = [note for note in (done[0].get("notes", []) if done else [])
            if len(done) > 1 and all(note in r.get("notes", []) for r in done)]
  for name, r in results:
    if isinstance(r, str):
      lines.append(f"{name}: error: {r}")
    else:
      lines.append(f"{name}: {r['collapse']['diagnosis']}")
      lines.extend(f"{name}: note: {note}" for note in r.get("notes", [])
                   if note not in shared)
  lines.extend(f"every run: note: {note}" for note in shared)
  return "\n".join(lines)
