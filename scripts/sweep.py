"""Train a sweep (a grid of runs) as compiled, vmapped programs; report it.

  python scripts/sweep.py --config experiments/beta_sweep.py --workdir runs/beta_sweep

Each member lands in <workdir>/<member>/ as a complete run (config, metrics,
checkpoints). Re-running resumes an interrupted sweep. At the end a table is
printed and sweep.csv, sweep.json and rate_distortion.png are written.
"""

import os
import signal

# Until training takes over SIGTERM (vae.cli.stop_on_signals), a SIGTERM
# during start-up (the imports) exits 75 at once: nothing has been written.
signal.signal(signal.SIGTERM, lambda *_: os._exit(75))  # pylint: disable=protected-access

from absl import flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags

from vae import cli, numerics
from vae.sweep import launch, report, shards, runner as sweep
from vae.train import devices

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
_LOG_EVERY = flags.DEFINE_integer(
    "log_every", 1, "When stderr is not a terminal (a job log, > log.txt): "
    "one progress line every this many epochs, instead of a bar.", lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "CPU devices to expose (0: one per core); a sweep's "
    "member axis is sharded over them.")
_SHARD = flags.DEFINE_string(
    "shard", None, "I/N: train only shard I of N (default: from "
    "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX/"
    "VAE_SHARD_COUNT when set, else the whole sweep). Shards write no report.")
_REPORT = flags.DEFINE_bool(
    "report", False, "Train nothing: rebuild the table, CSV, JSON and "
    "rate-distortion plot from the member directories, and name members "
    "that are missing or unfinished.")
_LAUNCH = flags.DEFINE_integer(
    "launch", 0, "If > 0: submit the sweep as this many shards through "
    "submitit (--executor), retry failed shards, then write the report.",
    lower_bound=0)
_EXECUTOR = flags.DEFINE_enum("executor", "local", ["local", "slurm"],
                              "submitit executor for --launch.")
_RETRIES = flags.DEFINE_integer("max_retries", 2, "Re-submissions of a "
                                "failed shard (--launch).", lower_bound=0)


def main(argv):
  del argv
  with cli.user_errors(), cli.stop_on_signals() as should_stop:
    if _REPORT.value:
      rows = report.sweep_rows(_WORKDIR.value, _CONFIG.value)
    elif _LAUNCH.value:
      rows = launch.launch(_CONFIG.value, _WORKDIR.value, _LAUNCH.value,
                           executor=_EXECUTOR.value,
                           max_retries=_RETRIES.value)
    else:
      numerics.configure(sweep.numerics_mode(_CONFIG.value))  # before JAX starts
      devices.use_cpu_cores_as_devices(_CPU_DEVICES.value)
      shard = (shards.parse_shard(_SHARD.value) if _SHARD.value
               else shards.shard_from_environment())
      rows = sweep.run_sweep(_CONFIG.value, _WORKDIR.value,
                             progress=_PROGRESS.value and _LOG_EVERY.value,
                             should_stop=should_stop, shard=shard)
      if shard is not None:  # the report is the merged one: --report
        print(report.sweep_table(rows))
        print(f"shard {shard.index}/{shard.count} done; after every shard: "
              "scripts/sweep.py ... --report")
        return
    print(report.sweep_table(rows))
    for path in sweep.write_report(rows, _WORKDIR.value):
      print(f"wrote {path}")
    not_done = [f"{r['member']} ({r['status']})" for r in rows
                if r["status"] not in ("finished", "diverged")]
    if not_done:
      print(f"not finished: {', '.join(not_done)}")


if __name__ == "__main__":
  cli.run(main)
