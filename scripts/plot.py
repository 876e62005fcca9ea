"""Draw every figure that applies to a run, or to a sweep, as PNG files.

  python scripts/plot.py --workdir runs/quickstart
  python scripts/plot.py --workdir runs/quickstart --baseline runs/autoencoder
  python scripts/plot.py --workdir runs/beta_sweep          # a sweep directory

A run directory (it holds config.json) gets its figures in <workdir>/figures/;
a sweep directory (its subdirectories are runs) gets rate_distortion.png,
sweep_reconstructions.png and, with an autoencoder member, a latent scatter
beside it in <sweep>/figures/ (--members: each member's own figures too).
The same run and --seed give byte-identical files. --tensorboard also writes
TensorBoard event files (needs tensorboardX, the optional extra).
"""

from pathlib import Path

from absl import flags

from vae import cli, numerics
from vae.store import runs
from vae.sweep import figures as sweep_figures
from vae.viz import figures, tensorboard

_WORKDIR = flags.DEFINE_string("workdir", None, "A run directory or a sweep "
                               "directory (whose subdirectories are runs).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every random draw in the "
                             "figures (test images shown, samples, t-SNE).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best",
                                  "'best', 'latest' or an epoch number.")
_BASELINE = flags.DEFINE_string("baseline", None, "An autoencoder run drawn "
                                "beside the VAE in the latent scatter.")
_MEMBERS = flags.DEFINE_bool("members", False, "Sweep: also draw every "
                             "member's own figures into <member>/figures/.")
_TENSORBOARD = flags.DEFINE_bool("tensorboard", False, "Also export "
                                 "metrics.jsonl and a reconstruction image as "
                                 "TensorBoard event files (run or each "
                                 "member) into <run>/tensorboard/.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  with cli.user_errors():
    workdir = Path(_WORKDIR.value)
    which = runs.parse_checkpoint(_CHECKPOINT.value)
    is_run = (workdir / runs.CONFIG_FILE).is_file()
    if not is_run and not (workdir.is_dir() and runs.member_dirs(workdir)):
      raise runs.RunError(
          f"--workdir={str(workdir)!r} is not accepted: neither a run "
          f"directory (holds {runs.CONFIG_FILE}) nor a sweep directory (whose "
          f"subdirectories hold {runs.CONFIG_FILE})")
    # Before JAX starts (every member of a sweep shares its mode).
    first = workdir if is_run else runs.member_dirs(workdir)[0]
    numerics.configure(runs.load_config(first).numerics)
    if is_run:
      written = figures.plot_run(workdir, _SEED.value, which,
                               baseline=_BASELINE.value)
      members = [workdir]
    else:
      if _BASELINE.value:
        print("note: --baseline is ignored for a sweep; its autoencoder "
              "member (objective='autoencoder'), if any, is the baseline")
      written = sweep_figures.plot_sweep(workdir, _SEED.value, which,
                                 members_figures=_MEMBERS.value, log=print)
      members = runs.member_dirs(workdir)
    for path in written:
      print(path)
    if _TENSORBOARD.value:
      for member in members:
        try:
          logdir = tensorboard.export_run(member, seed=_SEED.value,
                                          which=which, log=print)
        except runs.RunError as e:
          if is_run:
            raise
          print(f"note: no TensorBoard export of {member}: {e}")
          continue
        if logdir is None:
          break
        print(logdir)


if __name__ == "__main__":
  cli.run(main)
