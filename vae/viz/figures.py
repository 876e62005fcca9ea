"""A run or sweep directory to its figures (PNG files, drawn by :mod:`vae.plots`).

:func:`plot_run` draws every figure that applies to one run directory into
its ``figures/`` folder; :func:`plot_sweep` draws the sweep figures of a
directory whose subdirectories are runs. Which checkpoint is drawn, which
test images are shown and every random draw come from the run directory and
the seed (:func:`vae.rng.figure_keys`): the same run and seed give
byte-identical files.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence


from vae import grouping, numerics, report, rng
from vae.viz import plots
from vae.store import restore, runs
from vae.data import preprocess
from vae.viz import images as images_lib


def plot_run(workdir, seed: int = 0, which: str | int = "best", *,
             baseline: str | Path | None = None, out_dir=None,
             tsne_points: int = 1000, num_images: int = 20
             ) -> list[Path]:
  """Draw every figure that applies to a run into ``workdir/figures/``.

  Always: ``reconstructions.png`` (two sets of 10 test images),
  ``traversals.png``, ``latent_scatter.png``, ``training_curves.png`` (when
  ``metrics.jsonl`` has records). For a VAE (not an autoencoder run):
  ``prior_samples.png`` and ``kl_per_dim.png``; with ``latent_dim == 2``
  ``latent_manifold.png``; with ``latent_dim >= 2`` ``neighbourhood.png``.
  The scatter is direct for ``latent_dim <= 2``, else PCA + t-SNE; a
  ``baseline`` run is drawn beside it.

  Args:
    workdir: a run directory written by :func:`vae.train.fit`.
    seed: root of every draw: ``jax.random.key(seed)``, folded with
      PICK_STREAM (test images shown), RECON_STREAM, PRIOR_STREAM and
      SCATTER_STREAM. Same run, same seed: byte-identical files.
    which: checkpoint: ``"best"``, ``"latest"`` or an epoch.
    baseline: an autoencoder run directory drawn beside in the scatter.
    out_dir: where to write (default ``workdir/figures``).
    tsne_points: largest t-SNE subset.
    num_images: test images in the reconstruction figure.

  Returns:
    The paths written, in drawing order.
  """
  workdir = Path(workdir)
  numerics.check(runs.load_config(workdir).numerics)
  run = restore.load_run(workdir, which)
  base = None  # loaded first: a bad baseline fails before any drawing
  if baseline is not None:
    b = restore.load_run(baseline, "best")
    if b.config.dataset != run.config.dataset:
      raise runs.RunError(
          f"baseline {baseline} was trained on {b.config.dataset!r}, not on "
          f"{run.config.dataset!r} like {workdir}: accepted, a baseline of "
          "the same dataset")
    base = (b.params, b.model)
  out = Path(out_dir) if out_dir is not None else workdir / runs.FIGURES_DIR
  files = runs.FIGURE_FILES
  test = preprocess.load_test_set(run.config)
  keys = rng.figure_keys(seed)
  n = test.images.shape[0]
  order = images_lib.pick_indices(keys.pick, n, max(num_images, 1))
  shown, focus = test.images[order[:num_images]], test.images[order[0]]
  d = images_lib.latent_dim(run.model)
  is_vae = run.config.objective == "vae"
  params, model = run.params, run.model
  name = workdir.resolve().name
  written = [plots.reconstructions(
      params, model, shown, keys.recon, out / files["reconstructions"],
      title=f"{name} (epoch {run.epoch}): reconstructions of {len(shown)} "
      "test images" + ("" if is_vae else " (autoencoder: its log-variance "
                       "head is not trained; the stochastic row is not "
                       "meaningful)")
  ).path]
  if is_vae:
    written.append(plots.prior_samples(params, model, keys.prior,
                                       out / files["prior_samples"]).path)
    if d == 2:
      written.append(plots.latent_manifold(
          params, model, out / files["latent_manifold"]).path)
  written.append(plots.latent_scatter(
      params, model, test.images, test.labels, out / files["latent_scatter"],
      keys.scatter, base, tsne_points=tsne_points,
      names=("VAE" if is_vae else "autoencoder", "autoencoder"),
      batch_size=run.config.eval_batch_size).path)
  written.append(plots.traversals(params, model, focus,
                                  out / files["traversals"]).path)
  if is_vae and d >= 2:
    written.append(plots.neighbourhood_grid(params, model, focus,
                                            out / files["neighbourhood"]).path)
  records = runs.read_metrics(workdir)
  if records:
    written.append(plots.training_curves(records,
                                         out / files["training_curves"]).path)
  if is_vae:
    written.append(plots.kl_per_dim_bars(
        params, model, test.images, out / files["kl_per_dim"],
        batch_size=run.config.eval_batch_size).path)
  return written


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
  one ``rate_distortion.png`` (:func:`vae.report.rate_distortion_figure`,
  from ``rows`` if given, else :func:`vae.report.sweep_rows`: the test
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
  rd_path = report.rate_distortion_figure(
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
      written += plot_run(m, seed, which, baseline=baseline_dir,
                          tsne_points=tsne_points)
  return written
