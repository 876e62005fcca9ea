"""Compare two runs: parameters (max relative difference, bitwise?) and the
final test ELBO. E.g. a sweep member against the same settings run alone:

  python scripts/compare.py runs/beta_sweep/beta2_seed1 runs/beta2_seed1_alone
"""

import json

from absl import app, flags

from vae import cli, restore, runs

_WHICH = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or an epoch.")


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: compare.py RUN_A RUN_B")
  with cli.user_errors():
    which = runs.parse_checkpoint(_WHICH.value)
    print(json.dumps(restore.compare_runs(argv[1], argv[2], which), indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
