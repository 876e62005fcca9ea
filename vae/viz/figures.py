"""A run directory to its figures (PNG files, drawn by :mod:`vae.viz.plots`).

:func:`plot_run` draws every figure that applies to one run directory into
its ``figures/`` folder (a sweep directory's figures are
:mod:`vae.sweep.figures`'s). Which checkpoint is drawn, which test images
are shown and every random draw come from the run directory and the seed
(:func:`vae.rng.figure_keys`): the same run and seed give byte-identical
files.
"""

from __future__ import annotations

from pathlib import Path

from vae import numerics, rng
from vae.data import preprocess
from vae.store import restore, runs
from vae.viz import images as images_lib
from vae.viz import plots


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
    workdir: a run directory written by :func:`vae.train.loop.fit`.
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
