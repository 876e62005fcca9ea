"""Compare two runs: parameters (max relative difference, bitwise?) and the
final test ELBO. E.g. a sweep member against the same settings run alone:

  python scripts/compare.py runs/beta_sweep/beta2_seed1 runs/beta2_seed1_alone

Against a reference file (docs/reference/), a run or a whole sweep:

  python scripts/compare.py --reference docs/reference/quickstart.json runs/quickstart_portable
  python scripts/compare.py --write_reference docs/reference/quickstart.json runs/quickstart_portable
"""

import json
from pathlib import Path

from absl import app, flags

from vae import cli
from vae.store import restore, runs

_WHICH = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or an epoch.")
_REFERENCE = flags.DEFINE_string("reference", None, "Compare RUN (a run or a "
                                 "sweep directory) with this reference file.")
_WRITE = flags.DEFINE_string("write_reference", None, "Write RUN's reference "
                             "file here (a sweep directory: every member).")


def main(argv):
  with cli.user_errors():
    if _REFERENCE.value or _WRITE.value:
      if len(argv) != 2:
        raise app.UsageError("usage: compare.py --reference FILE RUN")
      is_sweep = (Path(argv[1]) / runs.SWEEP_CONFIG_FILE).exists()
      if _WRITE.value:
        ref = (restore.sweep_reference(argv[1]) if is_sweep
               else restore.run_reference(argv[1]))
        runs.write_json_atomic(Path(_WRITE.value), ref)
        print(f"wrote {_WRITE.value}")
        return
      reference = json.loads(Path(_REFERENCE.value).read_text())
      print(json.dumps(restore.compare_to_reference(argv[1], reference),
                       indent=2))
      return
    if len(argv) != 3:
      raise app.UsageError("usage: compare.py RUN_A RUN_B")
    which = runs.parse_checkpoint(_WHICH.value)
    print(json.dumps(restore.compare_runs(argv[1], argv[2], which), indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
