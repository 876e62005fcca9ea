"""Sweeps on a cluster: the shards of :mod:`vae.sweep.shards` submitted as one job
array through submitit (SLURM, or its ``local`` executor, which runs the
same submission path as subprocesses on this machine), retried when they
fail, then one merged report.

Why submitit: sweep members never talk to each other, so the scale-out unit
is an ordinary process per shard, and the scheduler this field's clusters
run is SLURM (job arrays); submitit is SLURM's Python front end and its
local executor lets the tests exercise the real submission code. Each shard
is the same run a user gets from ``scripts/sweep.py --shard I/N``: its own
devices, its member directories, SIGTERM checkpoints and exits 75 (a SLURM
preemption is retried), a diverging member stops alone. A re-submitted sweep
trains only what is unfinished (every member resumes from its checkpoint).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import ml_collections

from vae import config as config_lib
from vae import numerics
from vae.sweep import report, shards, runner as sweep
from vae.store import runs
from vae.errors import RunError

EXECUTORS = ("local", "slurm")
SUBMITIT_DIR = "submitit"


def train_shard(workdir: str, index: int, count: int) -> list[str]:
  """The job of shard ``index`` of ``count``: the sweep recorded in
  ``workdir/sweep_config.json``, this shard's members only. Returns the
  names of the members it trained."""
  config = runs.load_sweep_config(Path(workdir))
  # The job's entry point: its process has not started JAX yet.
  numerics.configure(sweep.numerics_mode(config))
  rows = sweep.run_sweep(config, workdir, progress=False, log=print,
                         shard=shards.Shard(index, count))
  return [r["member"] for r in rows]


def launch(config: ml_collections.ConfigDict, workdir: str | Path,
           count: int, *, executor: str = "local", max_retries: int = 2,
           parameters: dict[str, Any] | None = None,
           log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Train the sweep as ``count`` shards, one array job each; retry failed
  shards up to ``max_retries`` times; return the merged report's rows.

  Args:
    config: the sweep config (recorded once as ``sweep_config.json``).
    workdir: the shared sweep directory.
    count: shards (array tasks).
    executor: "local" (subprocesses on this machine) or "slurm".
    max_retries: re-submissions of a failed shard.
    parameters: submitit executor parameters (e.g. ``{"slurm_partition":
      "gpu", "timeout_min": 600}``).

  Raises:
    RunError: a shard still failed after the retries (its log is named);
      or, before anything is written: the executor is unknown or cannot run
      here (``slurm`` without SLURM's ``srun``), submitit is not installed,
      or the workdir cannot hold the sweep.
    ConfigError: ``count`` < 1, or a group cannot fit in memory.
  """
  if executor not in EXECUTORS:
    raise RunError(f"executor={executor!r} is not accepted: one of "
                   f"{EXECUTORS}")
  plan = shards.plan(config, count)
  if executor == "slurm" and shutil.which("srun") is None:
    raise RunError("executor='slurm' is not accepted here: SLURM's srun is "
                   "not on PATH (not a SLURM login node?); use the local "
                   "executor, or launch from a machine of the cluster")
  try:
    import submitit  # optional: pip install '.[cluster]'
  except ImportError:
    raise RunError("launching shards needs submitit, which is not installed: "
                   "pip install '.[cluster]'") from None
  for shard_plan in plan:
    for block in shard_plan:
      config_lib.check_training_memory([c for _, c in block])
  workdir = sweep.prepare_sweep_dir(workdir, config)
  todo = [i for i in range(count) if plan[i]]
  ex = submitit.AutoExecutor(folder=workdir / SUBMITIT_DIR, cluster=executor)
  ex.update_parameters(**{"timeout_min": 24 * 60, **(parameters or {})})
  for attempt in range(max_retries + 1):
    jobs = ex.map_array(train_shard, [str(workdir)] * len(todo), todo,
                        [count] * len(todo))
    log(f"{workdir}: submitted shards {todo} of {count} "
        f"(attempt {attempt + 1}, jobs {[j.job_id for j in jobs]})")
    failed = []
    for index, job in zip(todo, jobs):
      try:
        job.result()
      except Exception as e:  # submitit's FailedJobError and the like
        failed.append(index)
        log(f"{workdir}: shard {index}/{count} failed: "
            f"{str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
            f" (log: {job.paths.stderr})")
    if not failed:
      break
    todo = failed
  else:
    raise RunError(f"{workdir}: shards {todo} of {count} failed after "
                   f"{max_retries} retries; their logs are under "
                   f"{workdir / SUBMITIT_DIR}")
  rows = report.sweep_rows(workdir, config)
  sweep.write_report(rows, workdir)
  return rows
