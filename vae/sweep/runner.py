"""Sweeps as compiled programs: a grid of runs trained together.

A sweep config is an ordinary run config plus a ``sweep`` field naming the
axes (:mod:`vae.sweep.grouping`). Members that differ only in traced settings
(seed, beta, free bits, KL schedule: :data:`vae.train.objectives.TRACED_FIELDS`)
form one *group*: their parameters and optimizer states are stacked on a
leading axis and the whole group trains as one compiled, vmapped program
(:func:`vae.train.loop.fit_members`), its member axis sharded over every device.
Axes that change shapes or static settings (latent size, widths, likelihood,
learning rate...) give one group per distinct setting, run one after
another; results merge into one table (:mod:`vae.sweep.report`).

Each member is a first-class run in ``<sweep_dir>/<member-name>/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections

from vae import config as config_lib
from vae import errors, inputs, numerics
from vae.evals import evaluate
from vae.evals.evaluator import BoundSettings
from vae.store import runs
from vae.sweep import figures, grouping, report, shards
from vae.train import loop


def run_sweep(config: ml_collections.ConfigDict, workdir: str | Path, *,
              devices=None, progress: bool | int = True,
              log: Callable[[str], None] = print,
              should_stop: Callable[[], str | None] | None = None,
              shard: shards.Shard | None = None) -> list[dict[str, Any]]:
  """Train every member (resuming any that were interrupted); return rows.

  A member whose loss turns non-finite stops alone (its row says
  "diverged"); the other members and groups go on.

  Args:
    config: a sweep config.
    workdir: the sweep directory; member ``name`` lives in ``workdir/name``.
    devices: devices to shard the member axis over (default: all).
    shard: train only this shard's blocks (:func:`vae.sweep.shards.plan`); the
      rows are then this shard's members only.

  Returns:
    One row per member (:func:`vae.sweep.report.sweep_rows`, read back from the
    member directories): name, the swept fields, final test metrics,
    rate/distortion, status, seconds, best epoch.
  """
  named = grouping.members(config)
  numerics.check(numerics_mode(config))
  if shard is None:
    work, label = grouping.groups(named), ""
  else:
    work = shards.plan(config, shard.count)[shard.index]
    label = f"shard {shard.index}/{shard.count}, "
  for group in work:  # refused before anything is written
    config_lib.check_training_memory([c for _, c in group])
  workdir = prepare_sweep_dir(workdir, config)
  devices = jax.devices() if devices is None else devices
  for index, group in enumerate(work):
    names = [n for n, _ in group]
    desc = f"{label}group {index + 1}: {len(group)} member(s)"
    log(f"{workdir}: {desc} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    try:
      loop.fit_members([c for _, c in group], [workdir / n for n in names],
                        devices=devices, progress=progress, desc=desc,
                        log=log, should_stop=should_stop)
    except errors.Diverged as e:  # a lone member: it stops, the sweep goes on
      log(f"{e}")
  rows = report.sweep_rows(workdir, config)
  if shard is not None:
    mine = {n for group in work for n, _ in group}
    rows = [r for r in rows if r["member"] in mine]
  if config.eval_k > 0:
    add_evaluation(rows, workdir, config.eval_k, log)
  return rows


def numerics_mode(config: ml_collections.ConfigDict) -> str:
  """The one numerics mode of a sweep's members (what its entry point
  passes to :func:`vae.numerics.configure` before JAX starts).

  Raises:
    errors.ConfigError: the members ask for more than one mode.
  """
  modes = sorted({c.numerics for _, c in grouping.members(config)})
  if len(modes) > 1:
    raise errors.ConfigError(
        f"config.sweep sets numerics to {modes}: not accepted, the members "
        "of one sweep process share its XLA flags (run one sweep per mode)")
  return modes[0]


def prepare_sweep_dir(workdir: str | Path, config: ml_collections.ConfigDict
                      ) -> Path:
  """Create the sweep directory if needed and record its config
  (:func:`record_sweep_config`).

  Raises:
    errors.RunError: ``workdir`` is a file, or holds another sweep (or a
      damaged ``sweep_config.json``).
  """
  workdir = inputs.dir_or_absent(workdir,
                                 "a sweep directory (created if missing)")
  workdir.mkdir(parents=True, exist_ok=True)
  record_sweep_config(workdir, config)
  return workdir


def record_sweep_config(workdir: Path, config: ml_collections.ConfigDict
                        ) -> None:
  """Write ``sweep_config.json`` once (of racing shards, one writes it);
  a directory holding another sweep's config (or a damaged one) is
  refused."""
  new = config_lib.config_to_dict(config)
  path = workdir / runs.SWEEP_CONFIG_FILE
  if path.exists():  # read (and checked) before anything is written
    old = runs.read_config_dict(workdir, name=runs.SWEEP_CONFIG_FILE)
  elif runs.write_json_once(path, new):
    return
  else:  # another shard wrote it first
    old = runs.read_config_dict(workdir, name=runs.SWEEP_CONFIG_FILE)
  new = json.loads(json.dumps(new))  # tuples as JSON lists, like old's
  if old != new:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                     and k not in runs.RESUMABLE_CHANGES)
    if changed:
      raise errors.RunError(
          f"{workdir} holds another sweep (its {runs.SWEEP_CONFIG_FILE} "
          f"differs in {changed}); choose another --workdir")
    runs.write_json_atomic(path, new)  # e.g. more epochs: resumable


def write_report(rows: list[dict[str, Any]], workdir: str | Path
                 ) -> list[Path]:
  """The sweep's report files: ``sweep.csv`` and ``sweep.json``
  (:func:`vae.sweep.report.write_report`) and ``rate_distortion.png``
  (:func:`vae.sweep.figures.rate_distortion_figure`, when a VAE member
  finished); returns the paths written."""
  written = report.write_report(rows, workdir)
  plot_path = figures.rate_distortion_figure(rows, workdir)
  return written + ([plot_path] if plot_path is not None else [])


def add_evaluation(rows: list[dict[str, Any]], workdir: str | Path, k: int,
                   log: Callable[[str], None] = print) -> None:
  """Evaluate every finished VAE member (:func:`vae.evals.evaluate.evaluate_run`:
  its best checkpoint, k importance samples; writes its ``eval.json``) and
  add the NLL, active units, mutual information and collapse flag to its
  row."""
  for row in rows:
    if row["status"] != "finished" or row["objective"] == "autoencoder":
      continue
    log(f"evaluating {row['member']} (k={k})")
    result = evaluate.evaluate_run(Path(workdir) / row["member"],
                                   BoundSettings(k=k)).metrics
    row.update(nll=result["nll_nats"], active_units=result["active_units"],
               mutual_information=result["mutual_information"],
               collapse=bool(result["collapse"]["collapsed"]))
