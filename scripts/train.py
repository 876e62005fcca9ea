"""Train (or resume) one VAE run.

  python scripts/train.py --config experiments/quickstart.py --workdir runs/quickstart
  python scripts/train.py --config experiments/quickstart.py --config.beta=2 --workdir runs/beta2

Re-running on an existing workdir resumes from its latest checkpoint.
"""

import os
import signal

# Until training takes over SIGTERM (vae.cli.stop_on_signals), a SIGTERM
# during start-up (the imports) exits 75 at once: nothing has been written.
signal.signal(signal.SIGTERM, lambda *_: os._exit(75))  # pylint: disable=protected-access

from absl import flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags

from vae import cli, numerics
from vae import config as config_lib
from vae.train import loop as train
from vae.store import runs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created if needed).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar over epochs.")
_LOG_EVERY = flags.DEFINE_integer(
    "log_every", 1, "When stderr is not a terminal (a job log, > log.txt): "
    "one progress line every this many epochs, instead of a bar.", lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  with cli.user_errors(), cli.stop_on_signals() as should_stop:
    config = config_lib.validate(_CONFIG.value)  # a bad field: one line
    numerics.configure(config.numerics)  # before JAX starts
    summary = train.fit(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value and _LOG_EVERY.value,
                        should_stop=should_stop)
    print(train.summary_table(summary, runs.read_metrics(_WORKDIR.value)))


if __name__ == "__main__":
  cli.run(main)
