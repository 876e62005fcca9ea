"""A sweep directory to its figures: the rate-distortion plot of its report
rows, one row of reconstructions per beta and, with an autoencoder member,
the latent scatter of a VAE member beside it (drawn by :mod:`vae.viz.plots`;
each member's own figures by :func:`vae.viz.figures.plot_run`). The same
sweep and seed give byte-identical files.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from vae import rng
from vae.data import preprocess
from vae.store import restore, runs
from vae.sweep import grouping, report
from vae.viz import figures, plots
from vae.viz import images as images_lib


def rate_distortion_figure(rows: list[dict[str, Any]], workdir: str | Path
                           ) -> Path | None:
  """The sweep's ``rate_distortion.png``: the finished VAE members of its
  main family (:func:`vae.sweep.grouping.main_family`; the others are
  named in the title), at their final epoch. None when no VAE member finished.

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


def is_demonstration(config) -> bool:
  """A member that demonstrates a pitfall on purpose (the per-pixel-mean
  reduction, the clipped-probability likelihood), not a model to show."""
  return config.reduction != "sum" or config.bernoulli_form != "logits"


def plot_sweep(sweep_dir, seed: int = 0, which: str | int = "best", *,
               rows: Sequence[dict[str, Any]] | None = None,
               members_figures: bool = False, tsne_points: int = 1000,
               num_images: int = 10,
               log: Callable[[str], None] | None = None) -> list[Path]:
  """Draw a sweep's figures.

  Members are the subdirectories holding ``config.json``; those with
  ``objective == "autoencoder"`` are baselines, the others VAEs (members
  without a checkpoint yet are skipped, with a note). Writes the sweep's
  one ``rate_distortion.png`` (:func:`vae.sweep.figures.rate_distortion_figure`,
  from ``rows`` if given, else :func:`vae.sweep.report.sweep_rows`: the test
  metrics training logged at each member's final epoch, the figure
  ``scripts/sweep.py`` writes) and, into ``sweep_dir/figures/``,
  ``sweep_reconstructions.png`` (one row per beta:
  its lowest-seed member, on ``num_images`` test images of the first), and,
  when an autoencoder member exists, ``latent_scatter.png`` of the proper
  VAE member (not a pitfall demonstration) closest to beta = 1 beside it. With ``members_figures``, also
  :func:`plot_run` of every VAE member (with the autoencoder as baseline).

  Returns:
    The paths written.
  """
  log = log or (lambda s: None)
  sweep_dir = Path(sweep_dir)
  loaded = []
  for member in runs.member_dirs(sweep_dir):
    try:
      loaded.append((member, restore.load_run(member, which)))
    except runs.RunError as e:
      log(f"skipped {member}: {e}")
  vaes = [(m, r) for m, r in loaded if r.config.objective == "vae"]
  aes = [(m, r) for m, r in loaded if r.config.objective == "autoencoder"]
  if not vaes:
    raise runs.RunError(
        f"{sweep_dir} holds no VAE member run with a checkpoint (members are "
        f"subdirectories with {runs.CONFIG_FILE}; found "
        f"{[m.name for m, _ in loaded] or 'none'})")
  datasets = {r.config.dataset for _, r in loaded}
  if len(datasets) > 1:
    raise runs.RunError(f"the members of {sweep_dir} use different datasets "
                        f"{sorted(datasets)}: a sweep compares one dataset")
  out = sweep_dir / runs.FIGURES_DIR
  tests = {m: preprocess.load_test_set(r.config) for m, r in vaes}
  written = []
  rd_path = rate_distortion_figure(
      list(rows) if rows is not None else report.sweep_rows(sweep_dir),
      sweep_dir)
  if rd_path is not None:
    written.append(rd_path)

  # One row per setting (its lowest seed), labelled by beta when beta is
  # all that differs, else by the member's name without its seed.
  per_setting: dict[str, tuple[Path, Any]] = {}
  for m, r in sorted(vaes, key=lambda mr: (float(mr[1].config.beta),
                                           int(mr[1].config.seed), mr[0].name)):
    per_setting.setdefault(grouping.family(r.config) + repr(r.config.beta),
                           (m, r))
  chosen = list(per_setting.values())
  only_beta = len({grouping.family(r.config) for _, r in chosen}) == 1
  labels = [f"beta = {float(r.config.beta):g}" if only_beta else
            (re.sub(r"(^|_)seed\d+", "", m.name).strip("_") or m.name)
            for m, r in chosen]
  keys = rng.figure_keys(seed)
  first = tests[chosen[0][0]]
  shown = first.images[images_lib.pick_indices(keys.pick, first.images.shape[0],
                                           num_images)]
  written.append(plots.sweep_reconstructions(
      [(float(r.config.beta), r.params, r.model) for _, r in chosen], shown,
      out / runs.SWEEP_FIGURE_FILES["sweep_reconstructions"], labels=labels,
      title=f"{sweep_dir.resolve().name}: reconstructions, one row per "
      f"{'beta' if only_beta else 'setting'} (checkpoint {which!r}, lowest "
      "seed)").path)

  baseline_dir = aes[0][0] if aes else None
  proper = [(m, r) for m, r in vaes if not is_demonstration(r.config)]
  if aes and proper:
    # The VAE beside the autoencoder: the proper member (never a pitfall
    # demonstration) closest to beta = 1 in log, then lower beta, lower
    # seed, then name; each panel is labelled with its member's name.
    m, r = min(proper, key=lambda mr: (
        abs(math.log(max(float(mr[1].config.beta), 1e-12))),
        float(mr[1].config.beta), int(mr[1].config.seed), mr[0].name))
    ae_dir, ae = min(aes, key=lambda mr: mr[0].name)
    written.append(plots.latent_scatter(
        r.params, r.model, tests[m].images, tests[m].labels,
        out / runs.SWEEP_FIGURE_FILES["latent_scatter"], keys.scatter,
        (ae.params, ae.model),
        tsne_points=tsne_points,
        names=(f"{m.name} (VAE, beta={float(r.config.beta):g})",
               f"{ae_dir.name} (autoencoder)"),
        batch_size=r.config.eval_batch_size).path)
  if members_figures:
    for m, _ in vaes:
      written += figures.plot_run(m, seed, which, baseline=baseline_dir,
                                  tsne_points=tsne_points)
  return written
