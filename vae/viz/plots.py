"""Figures as PNG files (matplotlib, Agg): arrays or parameters in, PNG out.

Every figure function takes arrays or parameters, an explicit PRNG key where
it draws anything, and the output ``path``; it writes one PNG of a fixed pixel
size (stated in its docstring) and returns a :class:`Drawn`: the path and the
arrays it drew, so what a picture shows can be checked by value. The arrays
come from :mod:`vae.viz.images`; which figures a run or a sweep gets, and from
which checkpoint, is :mod:`vae.viz.figures`'s job.

Every image shows likelihood means E[x | z] (for Bernoulli: pixel
probabilities), never logits; values are clipped to [0, 1] for display only
(this matters for Gaussian means alone). Given the same inputs and key, the
bytes of the PNG are identical: figures are drawn with matplotlib's default
style (the user's matplotlibrc is ignored), Agg, and no timestamp metadata.
Matplotlib (and scikit-learn for PCA / t-SNE) are imported only when a
figure is drawn. Figures use their own ``Figure`` and Agg canvas, never
``pyplot``: no global backend is switched and nothing is left open.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae.model import core, diagnostics
from vae.evals import evaluator
from vae.viz.images import (decode_means, for_display,
                        latent_dim, manifold_latents, neighbourhood_latents,
                        pick_indices, project_2d, reconstruction_grid,
                        reconstruction_rows, seed_from_key, tile,
                        traversal_latents)
from vae.model.networks import VAE

DPI = 100


class Drawn(NamedTuple):
  """What a figure function wrote and the values it drew.

  Attributes:
    path: the PNG written.
    arrays: the drawn values by name (NumPy arrays), e.g. the reconstruction
      rows, the decoded grid or the 2-D scatter coordinates.
  """

  path: Path
  arrays: dict[str, np.ndarray]


# ----------------------------------------------------------------------------
# Drawing helpers.
# ----------------------------------------------------------------------------

_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "savefig.bbox": "standard",
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "svg.hashsalt": "vae",
}


@contextlib.contextmanager
def _style():
  try:
    import matplotlib
    import matplotlib.style
  except ImportError:
    raise ImportError("vae.viz.plots draws with matplotlib, which is not "
                      "installed: pip install 'vae[plots]' (or matplotlib)"
                      ) from None
  with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
    yield


def _figure(width_px: int, height_px: int):
  """A fresh Agg figure of exactly ``width_px x height_px`` pixels."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # Agg truncates width * dpi to an int: a hundredth of a pixel more keeps
  # e.g. 10.2 in * 100 dpi from becoming 1019 px.
  fig = Figure(figsize=((width_px + 0.01) / DPI, (height_px + 0.01) / DPI),
               dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def texts_outside_canvas(fig) -> list[str]:
  """The visible, non-empty texts of ``fig`` (titles, labels, tick labels,
  annotations, legends) whose rendered box is not inside the canvas: text
  a reader would see clipped. Empty for a well-laid-out figure."""
  renderer = fig.canvas.get_renderer()
  fig.draw(renderer)
  canvas = fig.bbox
  # Tick labels exist for ticks outside the view limits too, undrawn: only
  # the ticks inside an axis's view interval count.
  tick_labels, drawn_ticks = set(), []
  for ax in fig.axes:
    for axis in (ax.xaxis, ax.yaxis):
      lo, hi = sorted(axis.get_view_interval())
      span = (hi - lo) * 1e-9
      for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        labels = (tick.label1, tick.label2)
        tick_labels.update(id(t) for t in labels)
        if lo - span <= tick.get_loc() <= hi + span:
          drawn_ticks += [t for t in labels if t.get_visible()]
  texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text")
                                  and hasattr(a, "get_window_extent"))
           if id(t) not in tick_labels and t.get_visible()]
  clipped = []
  for text in texts + drawn_ticks:
    if not str(text.get_text()).strip():
      continue
    box = text.get_window_extent(renderer)
    if (box.x0 < canvas.x0 - 0.5 or box.y0 < canvas.y0 - 0.5
        or box.x1 > canvas.x1 + 0.5 or box.y1 > canvas.y1 + 0.5):
      clipped.append(str(text.get_text()))
  return clipped


def _save(fig, path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
  return path


def _axes_px(fig, left: float, top: float, width: float, height: float):
  """Axes at pixel coordinates measured from the figure's top-left corner."""
  fw, fh = fig.bbox.width, fig.bbox.height
  return fig.add_axes((left / fw, 1 - (top + height) / fh, width / fw,
                       height / fh))


def _imshow(ax, grid: np.ndarray) -> None:
  grid = for_display(grid)
  if grid.shape[-1] == 1:
    ax.imshow(grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0,
              interpolation="nearest", aspect="equal")
  else:
    ax.imshow(grid, interpolation="nearest", aspect="equal")


def _fit(grid_shape, max_w: float, max_h: float) -> tuple[float, float]:
  """The largest (w, h) pixel box of the grid's aspect inside max_w x max_h."""
  gh, gw = grid_shape[:2]
  scale = min(max_w / gw, max_h / gh)
  return gw * scale, gh * scale


def _centres(count: int, size: int, pad: int = 1) -> np.ndarray:
  """Pixel centres of ``count`` tiles of ``size`` along one grid axis."""
  return pad + np.arange(count) * (size + pad) + (size - 1) / 2


def _what_images_show(model: VAE) -> str:
  if model.likelihood == "bernoulli":
    return "pixel probabilities E[x|z] = sigmoid(logits)"
  return f"likelihood means E[x|z] ({model.likelihood})"


# ----------------------------------------------------------------------------
# Figures of one run.
# ----------------------------------------------------------------------------


def reconstructions(params, model: VAE, images, key: jax.Array, path, *,
                    cols: int = 10, title: str | None = None) -> Drawn:
  """Originals, deterministic and stochastic reconstructions: 1000 x (140 +
  226 * sets) px, ``sets = ceil(N / cols)``.

  Three rows per set of ``cols`` images: the originals ``x``, the
  deterministic path ``reconstruct(params, x)`` (z = posterior mean) and the
  stochastic path ``reconstruct(params, x, key)`` (one z ~ q(z | x) per
  image), each labelled, with a caption saying which is which.

  Args:
    params, model: the run.
    images: ``[N, H, W, C]`` in [0, 1].
    key: the key of the stochastic path (used as is).
    path: output PNG.
    cols: images per row.
    title: optional title.

  Returns:
    arrays ``originals``, ``deterministic``, ``stochastic`` (``[N, H, W, C]``,
    unclipped likelihood means) and ``grid`` (the tiled image drawn).
  """
  rows = reconstruction_rows(params, model, images, key)
  grid = reconstruction_grid(rows, cols)
  n, h = rows["originals"].shape[:2]
  sets = -(-n // cols)
  width, height = 1000, 140 + 226 * sets
  with _style():
    fig = _figure(width, height)
    box_w, box_h = _fit(grid.shape, width - 250, 226 * sets)
    ax = _axes_px(fig, 230, 40, box_w, box_h)
    _imshow(ax, grid)
    labels = ["originals x", "deterministic\nreconstruct(params, x)",
              "stochastic\nreconstruct(params, x, key)"] * sets
    ax.set_yticks(_centres(3 * sets, h), labels)
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0)
    fig.suptitle(title or f"Reconstructions of {n} test images", y=0.985,
                 fontsize=11)
    fig.text(
        0.02, 0.02,
        "Rows of each set: (1) originals x; (2) deterministic path "
        "reconstruct(params, x): z = posterior mean E[z|x];\n(3) stochastic "
        "path reconstruct(params, x, key): one z ~ q(z|x) per image. Rows 2-3 "
        f"show {_what_images_show(model)},\nnot logits and not binary "
        "samples of x. The two paths differ by the posterior noise alone.",
        ha="left", va="bottom", fontsize=9)
    path = _save(fig, path)
  return Drawn(path, {**rows, "grid": grid})


def prior_samples(params, model: VAE, key: jax.Array, path, *, n: int = 64
                  ) -> Drawn:
  """A grid of decoded z ~ N(0, I): 700 x 760 px.

  Args:
    params, model: the run.
    key: draws ``z`` = ``jax.random.normal(key, (n, latent_dim))``.
    path: output PNG.
    n: number of samples (a square grid of ``ceil(sqrt(n))`` columns).

  Returns:
    arrays ``z`` ``[n, latent_dim]``, ``images`` ``[n, H, W, C]`` (likelihood
    means) and ``grid``.
  """
  z = jax.random.normal(key, (n, latent_dim(model)), jnp.float32)
  images = decode_means(params, model, z)
  cols = math.ceil(math.sqrt(n))
  grid = tile(for_display(images), -(-n // cols), cols)
  with _style():
    fig = _figure(700, 760)
    box_w, box_h = _fit(grid.shape, 660, 660)
    _imshow(_axes_px(fig, (700 - box_w) / 2, 50, box_w, box_h), grid)
    fig.axes[0].set_axis_off()
    fig.suptitle(f"Samples from the prior: decode(z), z ~ N(0, I), "
                 f"latent_dim={latent_dim(model)}", y=0.985, fontsize=11)
    fig.text(0.5, 0.015, f"{n} draws; images show {_what_images_show(model)}",
             ha="center", va="bottom")
    path = _save(fig, path)
  return Drawn(path, {"z": np.asarray(z), "images": images, "grid": grid})


def latent_manifold(params, model: VAE, path, *, n: int = 20) -> Drawn:
  """The 2-D latent manifold: 800 x 860 px.

  Decodes the square grid :func:`manifold_latents` (standard-normal quantiles
  ``norm.ppf(linspace(0.05, 0.95, n))`` on both axes) and tiles it. Needs
  ``latent_dim == 2``.

  Returns:
    arrays ``z`` ``[n, n, 2]``, ``images`` ``[n, n, H, W, C]`` and ``grid``.
  """
  if latent_dim(model) != 2:
    raise ValueError(f"latent_manifold needs latent_dim == 2, not "
                     f"{latent_dim(model)}")
  z = manifold_latents(n)
  images = decode_means(params, model, z)
  h = images.shape[2]
  grid = tile(for_display(images.reshape((n * n,) + images.shape[2:])), n, n)
  q = z[0, :, 0]
  with _style():
    fig = _figure(800, 860)
    box_w, box_h = _fit(grid.shape, 700, 700)
    ax = _axes_px(fig, 80 + (700 - box_w) / 2, 60, box_w, box_h)
    _imshow(ax, grid)
    ticks = np.unique(np.linspace(0, n - 1, min(n, 5)).round().astype(int))
    ax.set_xticks(_centres(n, h)[ticks], [f"{q[t]:.2f}" for t in ticks])
    ax.set_yticks(_centres(n, h)[ticks], [f"{q[n - 1 - t]:.2f}" for t in ticks])
    ax.set_xlabel("z_1")
    ax.set_ylabel("z_2")
    fig.suptitle("Latent manifold: decode(z) on a grid of standard-normal "
                 f"quantiles ({n} x {n})", y=0.985, fontsize=11)
    fig.text(0.5, 0.015, "z = norm.ppf(linspace(0.05, 0.95, n)) per axis; "
             f"images show {_what_images_show(model)}", ha="center",
             va="bottom")
    path = _save(fig, path)
  return Drawn(path, {"z": z, "images": images, "grid": grid})


def latent_scatter(params, model: VAE, images, labels, path, key: jax.Array,
                   baseline: tuple[Any, VAE] | None = None, *,
                   tsne_points: int = 1000,
                   names: tuple[str, str] = ("VAE", "autoencoder"),
                   batch_size: int = evaluator.POSTERIOR_BATCH_SIZE) -> Drawn:
  """Posterior means of a test set in 2-D, coloured by label:
  (470 * cols + 130) x (70 + 500 * rows) px.

  Panels: the latents themselves when ``latent_dim <= 2``, else PCA and
  t-SNE, in one row (1 x 1 or 1 x 2); with a ``baseline`` (an autoencoder
  run's ``(params, model)``) its panels form a second column beside the run's
  (one row per projection: 1 x 2 or 2 x 2). t-SNE runs on at most
  ``tsne_points`` examples drawn with ``key`` (the same subset for both
  models), seeded from ``key``.

  Args:
    params, model: the run.
    images: ``[N, H, W, C]``.
    labels: int ``[N]`` (negative = unlabelled, drawn grey).
    path: output PNG.
    key: subset and t-SNE seed.
    baseline: optional ``(params, model)`` drawn beside.
    tsne_points: largest t-SNE subset.
    names: titles of the run and the baseline.
    batch_size: examples per encoder call (the run's ``eval_batch_size``).

  Returns:
    arrays ``labels``, ``tsne_index`` and per panel ``run_<method>`` /
    ``baseline_<method>`` (method: direct, pca, tsne) ``[N or n_tsne, 2]``
    coordinates.
  """
  labels = np.asarray(labels)
  subset_key, tsne_key = jax.random.split(key)
  n = labels.shape[0]
  tsne_index = (np.arange(n) if n <= tsne_points else
                np.sort(pick_indices(subset_key, n, tsne_points)))
  seed = seed_from_key(tsne_key)
  models = [("run", names[0], params, model)]
  if baseline is not None:
    models.append(("baseline", names[1], baseline[0], baseline[1]))
  panels = []
  for role, name, p, m in models:
    means = evaluator.posterior(p, images, model=m,
                                batch_size=batch_size).mean
    d = means.shape[1]
    methods = ["direct"] if d <= 2 else ["pca", "tsne"]
    for method in methods:
      idx = tsne_index if method == "tsne" else np.arange(n)
      xy = project_2d(means[idx], method, seed=seed)
      panels.append((role, name, method, d, idx, xy))

  arrays = {"labels": labels, "tsne_index": tsne_index}
  titles = {"direct": "{}", "pca": "PCA of {}", "tsne": "t-SNE of {}"}
  # Without a baseline the panels form one row; with one, one column per
  # model (the baseline beside the run) and one row per projection.
  place = {}
  for i, (role, _, method, _, _, _) in enumerate(panels):
    rank = [p[2] for p in panels if p[0] == role].index(method)
    place[i] = (rank, int(role == "baseline")) if baseline is not None else (
        0, i)
  rows = 1 + max(r for r, _ in place.values())
  cols = 1 + max(c for _, c in place.values())
  width, height = 470 * cols + 130, 70 + 500 * rows
  classes = np.unique(labels[labels >= 0])
  with _style():
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if classes.size <= 10 else "tab20"]
    fig = _figure(width, height)
    for i, (role, name, method, d, idx, xy) in enumerate(panels):
      arrays[f"{role}_{method}"] = xy
      row, col = place[i]
      ax = _axes_px(fig, 60 + 470 * col, 75 + 500 * row, 400, 400)
      lab = labels[idx]
      if (lab < 0).any():
        ax.scatter(xy[lab < 0, 0], xy[lab < 0, 1], s=4, c="0.6",
                   linewidths=0)
      for k, c in enumerate(classes):
        sel = lab == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=cmap(k % cmap.N),
                   linewidths=0, label=str(c))
      what = "codes" if name.startswith("autoencoder") else "posterior means"
      ax.set_title(f"{name}\n{titles[method].format(what)} (latent_dim={d}, "
                   f"{len(idx)} images)", fontsize=9)
      if method == "direct":
        ax.set_xlabel("z_1")
        ax.set_ylabel("z_2" if d == 2 else "(none)")
      elif method == "pca":
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
      else:
        ax.set_xticks([])
        ax.set_yticks([])
    if classes.size:
      handles, legend_labels = fig.axes[0].get_legend_handles_labels()
      fig.legend(handles, legend_labels, loc="center right", title="label",
                 markerscale=3, frameon=False)
    fig.suptitle("Latent scatter of the test set, coloured by label",
                 y=0.985, fontsize=11)
    path = _save(fig, path)
  return Drawn(path, arrays)


def traversals(params, model: VAE, image, path, *, n_steps: int = 11,
               limit: float = 3.0) -> Drawn:
  """Latent traversals around one test image: 860 x (150 + 56 * D) px.

  Row k decodes the image's posterior mean with z_k replaced by values from
  ``-limit`` to ``limit`` (the prior is N(0, 1), so these are prior standard
  deviations); the other dimensions stay at the posterior mean. Each row is
  labelled with the image's KL in that dimension (nats).

  Args:
    image: ``[H, W, C]``.

  Returns:
    arrays ``z`` ``[D, n_steps, D]``, ``images`` ``[D, n_steps, H, W, C]``,
    ``kl`` ``[D]``, ``values`` ``[n_steps]`` and ``grid``.
  """
  post = evaluator.posterior(params, np.asarray(image)[None], model=model)
  mean, kl = post.mean[0], np.asarray(core.kl_per_dim(post))[0]
  z = traversal_latents(mean, n_steps, limit)
  d = z.shape[0]
  images = decode_means(params, model, z)
  h = images.shape[2]
  grid = tile(for_display(images.reshape((d * n_steps,) + images.shape[2:])),
              d, n_steps)
  values = z[0, :, 0]
  original = np.asarray(image, np.float32)
  width, height = 860, 150 + 56 * d
  with _style():
    fig = _figure(width, height)
    box_w, box_h = _fit(grid.shape, 620, 56 * d + 2)
    ax = _axes_px(fig, 130, 60, box_w, box_h)
    _imshow(ax, grid)
    ax.set_yticks(_centres(d, h), [f"z_{k + 1}  KL {kl[k]:.2f}"
                                   for k in range(d)])
    ax.set_xticks(_centres(n_steps, h), [f"{v:+.1f}" for v in values])
    ax.tick_params(length=0)
    ax.set_xlabel("value of the traversed dimension (prior std)")
    ax_x = _axes_px(fig, 130 + box_w + 25, 60, 70, 70)
    _imshow(ax_x, tile(original[None], 1, 1))
    ax_x.set_axis_off()
    ax_x.set_title("x", fontsize=9)
    fig.suptitle("Traversals: one dimension at a time, the others at the "
                 "posterior mean of x", y=1 - 12 / height, fontsize=11)
    fig.text(0.5, 8 / height, f"images show {_what_images_show(model)}",
             ha="center", va="bottom")
    path = _save(fig, path)
  return Drawn(path, {"z": z, "images": images, "kl": kl, "values": values,
                      "grid": grid})


def neighbourhood_grid(params, model: VAE, image, path, *, n: int = 9,
                       span: float = 4.0) -> Drawn:
  """The decoded neighbourhood of one encoded image: 1000 x 780 px.

  An ``n x n`` grid spanning ``+-span`` posterior standard deviations around
  the posterior mean in the image's two most active dimensions (largest KL
  for this image; ties to the lower index); the centre cell (boxed) is the
  deterministic reconstruction. Needs ``latent_dim >= 2``.

  Args:
    image: ``[H, W, C]``.

  Returns:
    arrays ``z`` ``[n, n, D]``, ``images`` ``[n, n, H, W, C]``, ``dims``
    ``[2]`` (0-based), ``kl`` ``[D]``, ``std`` ``[D]`` and ``grid``.
  """
  post = evaluator.posterior(params, np.asarray(image)[None], model=model)
  mean, logvar = post.mean[0], post.logvar[0]
  kl = np.asarray(core.kl_per_dim(post))[0]
  if kl.shape[0] < 2:
    raise ValueError(f"neighbourhood_grid needs latent_dim >= 2, not "
                     f"{kl.shape[0]}")
  a, b = (int(i) for i in np.argsort(-kl, kind="stable")[:2])
  z = neighbourhood_latents(mean, logvar, (a, b), n, span)
  images = decode_means(params, model, z)
  h = images.shape[2]
  grid = tile(for_display(images.reshape((n * n,) + images.shape[2:])), n, n)
  std = np.exp(0.5 * logvar)
  offsets = np.linspace(-span, span, n)
  with _style():
    from matplotlib.patches import Rectangle
    fig = _figure(1000, 780)
    ax_x = _axes_px(fig, 40, 120, 180, 180)
    _imshow(ax_x, tile(np.asarray(image, np.float32)[None], 1, 1))
    ax_x.set_axis_off()
    ax_x.set_title("encoded test image x")
    fig.text(40 / 1000, 1 - 330 / 780,
             f"z_{a + 1}: mean {mean[a]:+.2f}\n  std {std[a]:.3f}, KL "
             f"{kl[a]:.2f} nats\nz_{b + 1}: mean {mean[b]:+.2f}\n  std "
             f"{std[b]:.3f}, KL {kl[b]:.2f} nats\n\nother dimensions at\n"
             "the posterior mean", ha="left", va="top")
    box_w, box_h = _fit(grid.shape, 620, 620)
    ax = _axes_px(fig, 340, 60, box_w, box_h)
    _imshow(ax, grid)
    c = _centres(n, h)
    centre = (n - 1) // 2
    ax.add_patch(Rectangle((c[centre] - h / 2, c[centre] - h / 2), h, h,
                           fill=False, edgecolor="red", linewidth=1.5))
    ticks = np.unique(np.linspace(0, n - 1, min(n, 5)).round().astype(int))
    ax.set_xticks(c[ticks], [f"{offsets[t]:+.0f}" for t in ticks])
    ax.set_yticks(c[ticks], [f"{offsets[n - 1 - t]:+.0f}" for t in ticks])
    ax.set_xlabel(f"z_{a + 1} - mean (posterior std)")
    ax.set_ylabel(f"z_{b + 1} - mean (posterior std)")
    fig.suptitle(f"Neighbourhood of x: +-{span:g} posterior std in its two "
                 f"most active dimensions", y=0.985, fontsize=11)
    fig.text(0.5, 0.012, f"centre (red) = reconstruct(params, x); images show "
             f"{_what_images_show(model)}", ha="center", va="bottom")
    path = _save(fig, path)
  return Drawn(path, {"z": z, "images": images, "dims": np.array([a, b]),
                      "kl": kl, "std": std, "grid": grid})


_CURVES = (("loss", "loss (nats)"), ("recon", "reconstruction -log p(x|z) "
                                     "(nats)"), ("kl", "KL(q(z|x) || p(z)) "
                                                 "(nats)"))


def training_curves(records: Sequence[dict[str, Any]], path) -> Drawn:
  """Train and test loss, reconstruction and KL per epoch: 1350 x 450 px.

  Args:
    records: ``metrics.jsonl`` records (:func:`vae.store.runs.read_metrics`); a
      panel is drawn for each of loss / recon / kl that the records hold.

  Returns:
    arrays ``epoch`` and ``<split>_<metric>`` per curve drawn.
  """
  if not records:
    raise ValueError("training_curves needs at least one metrics record")
  epochs = np.array([r["epoch"] for r in records])
  panels = [(k, label) for k, label in _CURVES
            if any(f"{s}_{k}" in records[0] for s in ("train", "test"))]
  if not panels:
    raise ValueError(f"the metrics records hold none of "
                     f"{[f'train_{k}' for k, _ in _CURVES]}; keys: "
                     f"{sorted(records[0])}")
  arrays = {"epoch": epochs}
  best = None
  if "test_elbo" in records[0]:
    best = records[int(np.argmax([r["test_elbo"] for r in records]))]["epoch"]
  with _style():
    fig = _figure(1350, 450)
    w = (1350 - 80) / len(panels)
    for i, (k, label) in enumerate(panels):
      ax = _axes_px(fig, 70 + w * i, 50, w - 80, 340)
      for split, style in (("train", "-"), ("test", "--")):
        key = f"{split}_{k}"
        if key in records[0]:
          values = np.array([r[key] for r in records], np.float64)
          arrays[key] = values
          ax.plot(epochs, values, style, label=split)
      if best is not None:
        ax.axvline(best, color="0.6", linestyle=":", linewidth=1,
                   label=f"best test ELBO (epoch {best})")
      ax.set_xlabel("epoch")
      ax.set_title(label)
      ax.grid(alpha=0.3)
      if i == 0:
        ax.legend()
    fig.suptitle("Training curves (metrics.jsonl; nats per example)", y=0.985,
                 fontsize=11)
    path = _save(fig, path)
  return Drawn(path, arrays)


def kl_per_dim_bars(params, model: VAE, images, path, *,
                    batch_size: int = evaluator.POSTERIOR_BATCH_SIZE
                    ) -> Drawn:
  """Mean KL per latent dimension over ``images``, as bars:
  max(600, 80 + 28 * D) x 420 px.

  The analytic KL(q(z_k | x) || N(0, 1)) in nats, averaged over the images
  (no sampling), with the dimensions above
  :data:`vae.model.diagnostics.KL_FLOOR` and the active units counted in the
  title: the evaluator's posterior diagnostics
  (:func:`vae.evals.evaluator.posterior_diagnostics`, encoding in batches of
  ``batch_size``, the run's ``eval_batch_size``), the thresholds
  ``scripts/evaluate.py`` reports.

  Returns:
    arrays ``kl`` ``[D]`` and ``posterior_mean_variance`` ``[D]``.
  """
  post = evaluator.posterior(params, images, model=model,
                             batch_size=batch_size)
  evaluated = evaluator.posterior_diagnostics(post)
  kl, variances = evaluated["kl_per_dim"], evaluated["posterior_mean_variance"]
  active = evaluated["active_units"]
  d = kl.shape[0]
  width = max(600, 80 + 28 * d)
  with _style():
    fig = _figure(width, 420)
    ax = _axes_px(fig, 70, 60, width - 100, 300)
    ax.bar(np.arange(1, d + 1), kl, color="tab:blue")
    ax.axhline(diagnostics.KL_FLOOR, color="0.4", linestyle=":", linewidth=1)
    ax.set_xticks(np.arange(1, d + 1))
    ax.set_xlim(0.4, d + 0.6)
    ax.set_xlabel("latent dimension k")
    ax.set_ylabel("mean KL (nats)")
    ax.grid(axis="y", alpha=0.3)
    informative = diagnostics.informative_dims(kl)
    ax.set_title(f"KL per latent dimension, mean over {post.mean.shape[0]} "
                 f"test images: total {kl.sum():.2f} nats\n{informative}/{d} "
                 f"above {diagnostics.KL_FLOOR:g} nats (dotted line); "
                 f"{active}/{d} active units (Var_x E[z_k|x] > "
                 f"{diagnostics.ACTIVE_UNIT_THRESHOLD:g})")
    path = _save(fig, path)
  return Drawn(path, {"kl": kl, "posterior_mean_variance": variances})


# ----------------------------------------------------------------------------
# Sweep figures.
# ----------------------------------------------------------------------------

RD_KEYS = ("beta", "seed", "rate", "distortion")


def rate_distortion(rows: Sequence[dict[str, Any]], path, *,
                    title: str | None = None) -> Drawn:
  """Rate-distortion plane of a sweep: 1250 x 520 px.

  Left: distortion against rate, one point per member coloured by beta
  (with its colour bar), the mean +- std over seeds per beta as error bars,
  each beta annotated. Right: rate (left axis) and distortion (right axis)
  against beta, each on its own scale (log-x; symlog when a beta is 0).

  Args:
    rows: dicts with at least ``beta``, ``seed``, ``rate`` (mean KL, nats)
      and ``distortion`` (mean -log p(x|z), nats).
    path: output PNG.
    title: optional figure title.

  Returns:
    arrays ``beta``, ``rate``, ``distortion`` (per row, sorted by beta then
    seed) and per distinct beta ``betas``, ``rate_mean``, ``rate_std``,
    ``distortion_mean``, ``distortion_std`` (std over seeds, ddof=0).
  """
  if not rows:
    raise ValueError("rate_distortion needs at least one row")
  for i, r in enumerate(rows):
    missing = [k for k in RD_KEYS if k not in r]
    if missing:
      raise ValueError(f"rate_distortion row {i} lacks {missing}; every row "
                       f"needs {list(RD_KEYS)}, got {sorted(r)}")
  rows = sorted(rows, key=lambda r: (float(r["beta"]), int(r["seed"])))
  beta = np.array([float(r["beta"]) for r in rows])
  rate = np.array([float(r["rate"]) for r in rows])
  dist = np.array([float(r["distortion"]) for r in rows])
  betas = np.unique(beta)
  stats = {}
  for name, values in (("rate", rate), ("distortion", dist)):
    stats[f"{name}_mean"] = np.array([values[beta == b].mean() for b in betas])
    stats[f"{name}_std"] = np.array([values[beta == b].std() for b in betas])
  with _style():
    import matplotlib
    import matplotlib.style
    from matplotlib.colors import LogNorm, Normalize
    fig = _figure(1250, 520)
    positive = betas[betas > 0]
    norm = (LogNorm(positive.min(), max(positive.max(), positive.min() * 1.01))
            if positive.size and (betas > 0).all() else
            Normalize(betas.min(), max(betas.max(), betas.min() + 1e-6)))
    cmap = matplotlib.colormaps["viridis"]
    ax = _axes_px(fig, 70, 50, 540, 400)
    points = ax.scatter(rate, dist, s=14, c=beta, cmap=cmap, norm=norm,
                        alpha=0.6, linewidths=0, label="member (one seed)")
    ax.errorbar(stats["rate_mean"], stats["distortion_mean"],
                xerr=stats["rate_std"], yerr=stats["distortion_std"],
                fmt="o-", color="black", ecolor="0.3", markersize=4,
                linewidth=1, capsize=3, label="mean +- std over seeds")
    for b, x, y in zip(betas, stats["rate_mean"], stats["distortion_mean"]):
      ax.annotate(f"beta={b:g}", (x, y), textcoords="offset points",
                  xytext=(6, 6), fontsize=8, annotation_clip=True)
    ax.set_xlabel("rate: mean KL(q(z|x) || p(z)) (nats)")
    ax.set_ylabel("distortion: mean -log p(x|z) (nats)")
    ax.set_title("Rate-distortion (test set)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    # Room for the annotations of the extreme points inside the axes.
    ax.margins(x=0.12, y=0.08)
    colorbar = fig.colorbar(points, cax=_axes_px(fig, 620, 50, 12, 400))
    colorbar.set_ticks(betas, labels=[f"{b:g}" for b in betas])
    colorbar.minorticks_off()
    colorbar.set_label("beta (member colour)")
    # Right: rate and distortion against beta, each on its own y axis (they
    # differ by an order of magnitude: on one axis the rate looks flat).
    ax2 = _axes_px(fig, 800, 50, 360, 400)
    ax3 = ax2.twinx()
    handles = []
    for axis, key, color, label in (
        (ax2, "rate", "tab:blue", "rate (KL), left axis"),
        (ax3, "distortion", "tab:orange",
         "distortion (-log p(x|z)), right axis")):
      handles.append(axis.errorbar(
          betas, stats[f"{key}_mean"], yerr=stats[f"{key}_std"], fmt="o-",
          color=color, capsize=3, markersize=4, label=label))
      axis.tick_params(axis="y", colors=color)
    if (betas > 0).all():
      ax2.set_xscale("log")
    else:
      ax2.set_xscale("symlog", linthresh=max(positive.min(), 1e-3)
                     if positive.size else 1.0)
    ax2.set_xticks(betas, [f"{b:g}" for b in betas])
    ax2.minorticks_off()
    ax2.set_xlabel("beta")
    ax2.set_ylabel("rate (nats per example)", color="tab:blue")
    ax3.set_ylabel("distortion (nats per example)", color="tab:orange")
    ax2.set_title("Rate and distortion against beta")
    ax2.grid(alpha=0.3)
    ax2.legend(handles=handles, loc="upper center", fontsize=8)
    n_seeds = ", ".join(f"{b:g}: {(beta == b).sum()}" for b in betas)
    fig.suptitle(title or f"Beta sweep: {len(rows)} members (seeds per "
                 f"beta: {n_seeds})", y=0.985, fontsize=11)
    path = _save(fig, path)
  return Drawn(path, {"beta": beta, "rate": rate, "distortion": dist,
                      "betas": betas, **stats})


def wrap_label(text: str, width: int = 18) -> str:
  """A row label on lines of at most ``width`` characters, broken after
  underscores or spaces (member names such as BROKEN_mean_pixels_demo)."""
  import textwrap
  lines = textwrap.wrap(text.replace("_", "_ "), width)
  return "\n".join(line.replace("_ ", "_") for line in lines) or text


def sweep_reconstructions(members: Sequence[tuple[float, Any, VAE]], images,
                          path, *, title: str | None = None,
                          labels: Sequence[str] | None = None) -> Drawn:
  """Originals, then one row of deterministic reconstructions per member:
  1000 x (100 + 84 * (1 + len(members))) px.

  Args:
    members: ``(beta, params, model)``, one per row, in the order given
      (:func:`plot_sweep` passes one per beta, increasing).
    images: ``[N, H, W, C]`` (N of about 10 fits the width).
    path: output PNG.

  Returns:
    arrays ``originals``, ``betas`` and ``reconstructions`` ``[M, N, H, W,
    C]``: ``reconstruct(params, x)`` of each member (likelihood means).
  """
  if not members:
    raise ValueError("sweep_reconstructions needs at least one member")
  x = jnp.asarray(images, jnp.float32)
  recons = np.stack([np.asarray(core.reconstruct(p, x, model=m))
                     for _, p, m in members])
  n, h = x.shape[0], x.shape[1]
  grid = tile(for_display(np.concatenate([np.asarray(x)[None], recons])
                          .reshape((-1,) + x.shape[1:])), 1 + len(members), n)
  rows = 1 + len(members)
  width, height = 1000, 100 + 84 * rows
  with _style():
    fig = _figure(width, height)
    box_w, box_h = _fit(grid.shape, width - 170, 84 * rows)
    ax = _axes_px(fig, 150 + (width - 170 - box_w) / 2, 45, box_w, box_h)
    _imshow(ax, grid)
    ax.set_yticks(_centres(rows, h), ["originals x"] + [wrap_label(t) for t in (
        labels if labels is not None else
        [f"beta = {b:g}" for b, _, _ in members])], fontsize=8)
    ax.set_xticks([])
    ax.tick_params(length=0)
    fig.suptitle(title or "Reconstructions across the sweep (one row per "
                 "beta)", y=1 - 12 / height, fontsize=11)
    fig.text(0.5, 10 / height, "Each row: deterministic path "
             "reconstruct(params, x) (z = posterior mean), "
             f"{_what_images_show(members[0][2])}", ha="center", va="bottom")
    path = _save(fig, path)
  return Drawn(path, {"originals": np.asarray(x),
                      "betas": np.array([b for b, _, _ in members], float),
                      "reconstructions": recons, "grid": grid})
