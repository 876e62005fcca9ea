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

from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags

from vae import cli, devices, report, sweep

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


def main(argv):
  del argv
  with cli.user_errors(), cli.stop_on_signals() as should_stop:
    devices.use_cpu_cores_as_devices(_CPU_DEVICES.value)
    rows = sweep.run_sweep(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value and _LOG_EVERY.value,
                           should_stop=should_stop)
    print(report.sweep_table(rows))
    for path in report.write_report(rows, _WORKDIR.value):
      print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
