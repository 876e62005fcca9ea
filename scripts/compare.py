"""Compare two runs: parameters (max relative difference, bitwise?) and the
final test ELBO. E.g. a sweep member against the same settings run alone:

  python scripts/compare.py runs/beta_sweep/beta2_seed1 runs/beta2_seed1_alone

Against a reference file (docs/reference/), a run or a whole sweep:

  python scripts/compare.py --reference docs/reference/quickstart.json runs/quickstart_portable
  python scripts/compare.py --write_reference docs/reference/quickstart.json runs/quickstart_portable

Exit status: 0 when the runs (or the run and the reference) are bitwise
equal, 1 when they differ (the JSON printed says how), 2 on bad input (a
missing or damaged run directory or reference file: one line naming it).
"""

import json
from pathlib import Path

from absl import app, flags

from vae import cli, inputs
from vae.store import restore, runs

_WHICH = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or an epoch.")
_REFERENCE = flags.DEFINE_string("reference", None, "Compare RUN (a run or a "
                                 "sweep directory) with this reference file.")
_WRITE = flags.DEFINE_string("write_reference", None, "Write RUN's reference "
                             "file here (a sweep directory: every member).")

USAGE = ("compare.py RUN_A RUN_B, compare.py --reference FILE RUN or "
         "compare.py --write_reference FILE RUN")


def _usage(argv: list[str], expected: str) -> app.UsageError:
  given = len(argv) - 1
  return app.UsageError(
      f"{expected} expected, {given} given{': ' if given else ''}"
      f"{' '.join(repr(a) for a in argv[1:])}; usage: {USAGE}")


def main(argv):
  with cli.user_errors():
    if _REFERENCE.value and _WRITE.value:
      raise app.UsageError("--reference and --write_reference are not "
                           f"accepted together; usage: {USAGE}")
    if _REFERENCE.value or _WRITE.value:
      if len(argv) != 2:
        raise _usage(argv, "one run or sweep directory")
      if _WRITE.value:
        path = inputs.output_file(
            _WRITE.value, "a file to write the reference to (in an existing "
            "directory)", flag="--write_reference")
        is_sweep = (Path(argv[1]) / runs.SWEEP_CONFIG_FILE).exists()
        ref = (restore.sweep_reference(argv[1]) if is_sweep
               else restore.run_reference(argv[1]))
        runs.write_json_atomic(path, ref)
        print(f"wrote {path}")
        return 0
      reference = restore.read_reference(_REFERENCE.value, flag="--reference")
      result = restore.compare_to_reference(argv[1], reference)
    else:
      if len(argv) != 3:
        raise _usage(argv, "two run directories")
      which = runs.parse_checkpoint(_WHICH.value)
      result = restore.compare_runs(argv[1], argv[2], which)
  print(json.dumps(result, indent=2))
  return 0 if result["bitwise_equal"] else cli.EXIT_DIFFERS


if __name__ == "__main__":
  cli.run(main)
