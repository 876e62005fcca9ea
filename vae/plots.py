"""Figures of a trained run or a sweep, as PNG files (matplotlib, Agg).

Every figure function takes arrays or parameters, an explicit PRNG key where
it draws anything, and the output ``path``; it writes one PNG of a fixed pixel
size (stated in its docstring) and returns a :class:`Drawn`: the path and the
arrays it drew, so what a picture shows can be checked by value.

Every image shows likelihood means E[x | z] (for Bernoulli: pixel
probabilities), never logits; values are clipped to [0, 1] for display only
(this matters for Gaussian means alone). Given the same inputs and key, the
bytes of the PNG are identical: figures are drawn with matplotlib's default
style (the user's matplotlibrc is ignored), Agg, and no timestamp metadata.

:func:`plot_run` draws every figure that applies to one run directory into its
``figures/`` folder; :func:`plot_sweep` draws the sweep figures of a directory
whose subdirectories are runs. Matplotlib (and scikit-learn for PCA / t-SNE)
are imported only when a figure is drawn, so ``vae.plots.tile`` and the other
array helpers work without them. Figures use their own ``Figure`` and Agg
canvas, never ``pyplot``: no global backend is switched and nothing is left
open.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import statistics
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae import core, likelihoods, runs
from vae.models import VAE

DPI = 100
FIGURES_DIR = "figures"

# Seed streams of plot_run / plot_sweep: root = jax.random.key(seed).
PICK_STREAM, RECON_STREAM, PRIOR_STREAM, SCATTER_STREAM = 0, 1, 2, 3

_PAD_VALUE = 0.5  # grey lines between tiles: neither ink (1) nor paper (0)


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
# Array helpers (no matplotlib).
# ----------------------------------------------------------------------------


def tile(images, rows: int, cols: int, *, pad: int = 1,
         pad_value: float = _PAD_VALUE) -> np.ndarray:
  """Images ``[N, H, W, C]`` laid out row-major on a ``rows x cols`` grid.

  Args:
    images: ``[N, H, W, C]`` with ``N <= rows * cols``; empty cells are left
      at ``pad_value``.
    rows, cols: grid size.
    pad: pixels between (and around) tiles.
    pad_value: value of the padding and of empty cells.

  Returns:
    float32 ``[rows * (H + pad) + pad, cols * (W + pad) + pad, C]``.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images of shape {images.shape} are not accepted: "
                     f"[N, H, W, C]")
  n, h, w, c = images.shape
  if n > rows * cols:
    raise ValueError(f"{n} images do not fit a {rows} x {cols} grid")
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value,
                np.float32)
  for i in range(n):
    r, k = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + k * (w + pad)
    out[y:y + h, x:x + w] = images[i]
  return out


def for_display(images) -> np.ndarray:
  """float32 copy clipped to [0, 1] (likelihood means; only Gaussian ones can
  leave the interval)."""
  return np.clip(np.asarray(images, np.float32), 0.0, 1.0)


def reconstruction_rows(params, model: VAE, images, key: jax.Array
                        ) -> dict[str, np.ndarray]:
  """The three rows of the reconstruction figure, ``[N, H, W, C]`` each.

  Returns:
    ``originals`` (``images``), ``deterministic`` =
    ``reconstruct(params, x)`` (z = posterior mean) and ``stochastic`` =
    ``reconstruct(params, x, key)`` (one z ~ q(z | x) per image): likelihood
    means, unclipped.
  """
  x = jnp.asarray(images, jnp.float32)
  return {
      "originals": np.asarray(x),
      "deterministic": np.asarray(core.reconstruct(params, x, model=model)),
      "stochastic": np.asarray(core.reconstruct(params, x, key, model=model)),
  }


def reconstruction_grid(rows: dict[str, np.ndarray], cols: int = 10
                        ) -> np.ndarray:
  """Tiled [originals; deterministic; stochastic] rows per set of ``cols``
  images, clipped to [0, 1]: ``[H', W', C]`` (used by the figure and by
  TensorBoard)."""
  n = rows["originals"].shape[0]
  sets = -(-n // cols)
  parts = []
  for s in range(sets):
    for name in ("originals", "deterministic", "stochastic"):
      chunk = rows[name][s * cols:(s + 1) * cols]
      parts.append(chunk)
      if chunk.shape[0] < cols:  # ragged last set: blank cells
        parts.append(np.full((cols - chunk.shape[0],) + chunk.shape[1:],
                             _PAD_VALUE, np.float32))
  return tile(for_display(np.concatenate(parts)), 3 * sets, cols)


def latent_dim(model: VAE) -> int:
  """Size of the model's latent space."""
  return int(model.encoder.latent_dim)


def decode_means(params, model: VAE, z) -> np.ndarray:
  """Likelihood means E[x | z] ``[..., H, W, C]`` of latents ``z``
  ``[..., latent_dim]`` (probabilities for Bernoulli)."""
  return np.asarray(likelihoods.likelihood_mean(
      model.likelihood, core.decode(params, jnp.asarray(z, jnp.float32),
                                    model=model)))


def encode_all(params, model: VAE, images, batch_size: int = 1000
               ) -> core.Posterior:
  """q(z | x) of every image, in batches: NumPy fields ``[N, latent_dim]``."""
  images = jnp.asarray(images, jnp.float32)
  fn = _jitted_encode(model)
  means, logvars = [], []
  for start in range(0, images.shape[0], batch_size):
    post = fn(params, images[start:start + batch_size])
    means.append(np.asarray(post.mean))
    logvars.append(np.asarray(post.logvar))
  return core.Posterior(np.concatenate(means), np.concatenate(logvars))


@functools.lru_cache(maxsize=16)
def _jitted_encode(model: VAE):
  return jax.jit(functools.partial(core.encode, model=model))


def normal_quantiles(n: int, lo: float = 0.05, hi: float = 0.95) -> np.ndarray:
  """``norm.ppf(linspace(lo, hi, n))``, float64 ``[n]`` (stdlib, no scipy)."""
  dist = statistics.NormalDist()
  return np.array([dist.inv_cdf(p) for p in np.linspace(lo, hi, n)])


def pick_indices(key: jax.Array, num: int, n: int) -> np.ndarray:
  """``n`` distinct indices of ``range(num)`` drawn with ``key``, in drawn
  order (all of them, permuted, when ``n >= num``)."""
  return np.asarray(jax.random.permutation(key, num))[:n]


def seed_from_key(key: jax.Array) -> int:
  """A non-negative int32 derived from ``key`` (for scikit-learn)."""
  return int(jax.random.randint(key, (), 0, 2**31 - 1))


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
    raise ImportError("vae.plots draws with matplotlib, which is not "
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


def manifold_latents(n: int = 20, lo: float = 0.05, hi: float = 0.95
                     ) -> np.ndarray:
  """The manifold's latent grid, float32 ``[n, n, 2]``: ``[i, j] =
  (q[j], q[n - 1 - i])`` with ``q = norm.ppf(linspace(lo, hi, n))``, so z_1
  grows to the right and z_2 upwards."""
  q = normal_quantiles(n, lo, hi)
  z1, z2 = np.meshgrid(q, q[::-1])
  return np.stack([z1, z2], axis=-1).astype(np.float32)


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


def project_2d(means: np.ndarray, method: str, *, seed: int = 0
               ) -> np.ndarray:
  """2-D coordinates ``[N, 2]`` of latent means ``[N, D]``.

  ``"direct"``: the latents themselves (D <= 2; D = 1 gets a zero second
  coordinate). ``"pca"``: the first two principal components (full SVD).
  ``"tsne"``: scikit-learn t-SNE (PCA initialisation, ``random_state=seed``,
  perplexity ``min(30, (N - 1) / 3)``).
  """
  means = np.asarray(means, np.float64)
  if method == "direct":
    if means.shape[1] > 2:
      raise ValueError(f"method='direct' needs latent_dim <= 2, not "
                       f"{means.shape[1]}")
    return np.pad(means, [(0, 0), (0, 2 - means.shape[1])])
  if method == "pca":
    from sklearn.decomposition import PCA
    k = min(2, means.shape[1])
    out = PCA(n_components=k, svd_solver="full").fit_transform(means)
    return np.pad(out, [(0, 0), (0, 2 - k)])
  if method == "tsne":
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    perplexity = float(min(30.0, (means.shape[0] - 1) / 3))
    # One OpenMP/BLAS thread: beside XLA's thread pool, more threads made
    # t-SNE of 1,000 points 6x slower on 2 cores (and the result does not
    # depend on the thread count).
    with threadpool_limits(limits=1):
      return TSNE(n_components=2, perplexity=perplexity, init="pca",
                  random_state=seed).fit_transform(means)
  raise ValueError(f"method={method!r} is not accepted: 'direct', 'pca' or "
                   f"'tsne'")


def latent_scatter(params, model: VAE, images, labels, path, key: jax.Array,
                   baseline: tuple[Any, VAE] | None = None, *,
                   tsne_points: int = 1000,
                   names: tuple[str, str] = ("VAE", "autoencoder")) -> Drawn:
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
    means = encode_all(p, m, images).mean
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


def traversal_latents(mean, n_steps: int = 11, limit: float = 3.0
                      ) -> np.ndarray:
  """``[D, n_steps, D]`` latents: row k is ``mean`` with z_k replaced by
  ``linspace(-limit, limit, n_steps)`` (in prior standard deviations)."""
  mean = np.asarray(mean, np.float32)
  d = mean.shape[-1]
  values = np.linspace(-limit, limit, n_steps, dtype=np.float32)
  z = np.broadcast_to(mean, (d, n_steps, d)).copy()
  for k in range(d):
    z[k, :, k] = values
  return z


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
  post = encode_all(params, model, np.asarray(image)[None])
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


def neighbourhood_latents(mean, logvar, dims: tuple[int, int], n: int = 9,
                          span: float = 4.0) -> np.ndarray:
  """``[n, n, D]``: ``mean`` moved by ``linspace(-span, span, n)`` posterior
  standard deviations in ``dims[0]`` (columns, left to right) and
  ``dims[1]`` (rows, bottom to top)."""
  mean = np.asarray(mean, np.float32)
  std = np.exp(0.5 * np.asarray(logvar, np.float32))
  offsets = np.linspace(-span, span, n, dtype=np.float32)
  a, b = dims
  z = np.broadcast_to(mean, (n, n, mean.shape[-1])).copy()
  z[:, :, a] = mean[a] + offsets[None, :] * std[a]
  z[:, :, b] = mean[b] + offsets[::-1, None] * std[b]
  return z


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
  post = encode_all(params, model, np.asarray(image)[None])
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
    records: ``metrics.jsonl`` records (:func:`vae.runs.read_metrics`); a
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


def kl_per_dim_bars(params, model: VAE, images, path) -> Drawn:
  """Mean KL per latent dimension over ``images``, as bars:
  max(600, 80 + 28 * D) x 420 px.

  The analytic KL(q(z_k | x) || N(0, 1)) in nats, averaged over the images
  (no sampling).

  Returns:
    arrays ``kl`` ``[D]``.
  """
  post = encode_all(params, model, images)
  kl = np.asarray(core.kl_per_dim(post)).mean(axis=0)
  d = kl.shape[0]
  width = max(600, 80 + 28 * d)
  with _style():
    fig = _figure(width, 420)
    ax = _axes_px(fig, 70, 60, width - 100, 300)
    ax.bar(np.arange(1, d + 1), kl, color="tab:blue")
    ax.set_xticks(np.arange(1, d + 1))
    ax.set_xlim(0.4, d + 0.6)
    ax.set_xlabel("latent dimension k")
    ax.set_ylabel("mean KL (nats)")
    ax.grid(axis="y", alpha=0.3)
    active = int((kl > 0.1).sum())
    ax.set_title(f"KL per latent dimension, mean over {post.mean.shape[0]} "
                 f"test images\ntotal {kl.sum():.2f} nats; {active}/{d} "
                 "dimensions above 0.1 nats")
    path = _save(fig, path)
  return Drawn(path, {"kl": kl})


# ----------------------------------------------------------------------------
# Sweep figures.
# ----------------------------------------------------------------------------

RD_KEYS = ("beta", "seed", "rate", "distortion")


def rate_distortion(rows: Sequence[dict[str, Any]], path, *,
                    title: str | None = None) -> Drawn:
  """Rate-distortion plane of a sweep: 1250 x 520 px.

  Left: distortion against rate, one point per member, the mean +- std over
  seeds per beta as error bars, each beta annotated. Right: rate and
  distortion against beta (log-x; symlog when a beta is 0).

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
    ax = _axes_px(fig, 70, 50, 560, 400)
    ax.scatter(rate, dist, s=14, c=[cmap(norm(b)) for b in beta], alpha=0.6,
               linewidths=0, label="member (one seed)")
    ax.errorbar(stats["rate_mean"], stats["distortion_mean"],
                xerr=stats["rate_std"], yerr=stats["distortion_std"],
                fmt="o-", color="black", ecolor="0.3", markersize=4,
                linewidth=1, capsize=3, label="mean +- std over seeds")
    for b, x, y in zip(betas, stats["rate_mean"], stats["distortion_mean"]):
      ax.annotate(f"beta={b:g}", (x, y), textcoords="offset points",
                  xytext=(6, 6), fontsize=8)
    ax.set_xlabel("rate: mean KL(q(z|x) || p(z)) (nats)")
    ax.set_ylabel("distortion: mean -log p(x|z) (nats)")
    ax.set_title("Rate-distortion (test set)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax2 = _axes_px(fig, 720, 50, 480, 400)
    for key, color, label in (("rate", "tab:blue", "rate (KL)"),
                              ("distortion", "tab:orange",
                               "distortion (-log p(x|z))")):
      ax2.errorbar(betas, stats[f"{key}_mean"], yerr=stats[f"{key}_std"],
                   fmt="o-", color=color, capsize=3, markersize=4,
                   label=label)
    if (betas > 0).all():
      ax2.set_xscale("log")
    else:
      ax2.set_xscale("symlog", linthresh=max(positive.min(), 1e-3)
                     if positive.size else 1.0)
    ax2.set_xticks(betas, [f"{b:g}" for b in betas])
    ax2.minorticks_off()
    ax2.set_xlabel("beta")
    ax2.set_ylabel("nats per example")
    ax2.set_title("Rate and distortion against beta")
    ax2.grid(alpha=0.3)
    ax2.legend()
    n_seeds = ", ".join(f"{b:g}: {(beta == b).sum()}" for b in betas)
    fig.suptitle(title or f"Beta sweep: {len(rows)} members (seeds per "
                 f"beta: {n_seeds})", y=0.985, fontsize=11)
    path = _save(fig, path)
  return Drawn(path, {"beta": beta, "rate": rate, "distortion": dist,
                      "betas": betas, **stats})


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
    ax.set_yticks(_centres(rows, h), ["originals x"] + list(
        labels if labels is not None else
        [f"beta = {b:g}" for b, _, _ in members]))
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


# ----------------------------------------------------------------------------
# Whole runs and sweeps.
# ----------------------------------------------------------------------------


class HeldOut(NamedTuple):
  """A run's test split, preprocessed as in training.

  Attributes:
    images: float32 ``[N, H, W, C]`` (binarised for ``binarize`` static or
      dynamic exactly as training did, by ``train.prepare_test_images``).
    labels: int32 ``[N]``.
  """

  images: np.ndarray
  labels: np.ndarray


def load_test_set(config) -> HeldOut:
  """The test split a run was evaluated on: ``data.load_dataset`` then
  ``train.prepare_test_images`` (binarised as in training)."""
  from vae import train
  dataset = _load_dataset(config.dataset, config.data_dir or None,
                          config.manual_dir or None)
  test = train.prepare_test_images(config, dataset.test_images)
  return HeldOut(np.asarray(test), np.asarray(dataset.test_labels))


@functools.lru_cache(maxsize=2)
def _load_dataset(name, data_dir, manual_dir):
  from vae import data
  return data.load_dataset(name, data_dir=data_dir, manual_dir=manual_dir)


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
  from vae import train
  workdir = Path(workdir)
  run = train.load_run(workdir, which)
  base = None  # loaded first: a bad baseline fails before any drawing
  if baseline is not None:
    b = train.load_run(baseline, "best")
    if b.config.dataset != run.config.dataset:
      raise runs.RunError(
          f"baseline {baseline} was trained on {b.config.dataset!r}, not on "
          f"{run.config.dataset!r} like {workdir}: accepted, a baseline of "
          "the same dataset")
    base = (b.params, b.model)
  out = Path(out_dir) if out_dir is not None else workdir / FIGURES_DIR
  test = load_test_set(run.config)
  root = jax.random.key(seed)
  keys = {s: jax.random.fold_in(root, s) for s in
          (PICK_STREAM, RECON_STREAM, PRIOR_STREAM, SCATTER_STREAM)}
  n = test.images.shape[0]
  order = pick_indices(keys[PICK_STREAM], n, max(num_images, 1))
  shown, focus = test.images[order[:num_images]], test.images[order[0]]
  d = latent_dim(run.model)
  is_vae = run.config.objective == "vae"
  params, model = run.params, run.model
  name = workdir.resolve().name
  written = [reconstructions(
      params, model, shown, keys[RECON_STREAM], out / "reconstructions.png",
      title=f"{name} (epoch {run.epoch}): reconstructions of {len(shown)} "
      "test images" + ("" if is_vae else " (autoencoder: its log-variance "
                       "head is not trained; the stochastic row is not "
                       "meaningful)")
  ).path]
  if is_vae:
    written.append(prior_samples(params, model, keys[PRIOR_STREAM],
                                 out / "prior_samples.png").path)
    if d == 2:
      written.append(latent_manifold(params, model,
                                     out / "latent_manifold.png").path)
  written.append(latent_scatter(
      params, model, test.images, test.labels, out / "latent_scatter.png",
      keys[SCATTER_STREAM], base, tsne_points=tsne_points,
      names=("VAE" if is_vae else "autoencoder", "autoencoder")).path)
  written.append(traversals(params, model, focus, out / "traversals.png").path)
  if is_vae and d >= 2:
    written.append(neighbourhood_grid(params, model, focus,
                                      out / "neighbourhood.png").path)
  records = runs.read_metrics(workdir)
  if records:
    written.append(training_curves(records, out / "training_curves.png").path)
  if is_vae:
    written.append(kl_per_dim_bars(params, model, test.images,
                                   out / "kl_per_dim.png").path)
  return written


def evaluate_member(run, test_images) -> dict[str, float]:
  """Rate and distortion of a loaded run on its test images, in nats.

  One posterior sample per example, in batches of ``config.eval_batch_size``
  keyed ``fold_in(eval_key, batch_index)`` with the run's own evaluation key
  ``fold_in(key(config.seed), EVAL_STREAM)``: as
  ``vae.train.evaluation_terms`` does, so these are the ``test_kl`` / ``test_recon`` that training logged for that
  epoch. ``rate`` = mean KL(q(z|x) || p(z)); ``distortion`` = mean
  -log p(x|z); ``elbo`` = -(rate + distortion).
  """
  from vae import train
  config = run.config
  key = jax.random.fold_in(jax.random.key(config.seed), train.EVAL_STREAM)
  fn = _jitted_terms(run.model)
  images = jnp.asarray(test_images, jnp.float32)
  batch = int(config.eval_batch_size)
  log_lik, kl = [], []
  for i, start in enumerate(range(0, images.shape[0], batch)):
    x = images[start:start + batch]
    if x.shape[0] < batch:  # pad as evaluation_terms does (same draws)
      x = jnp.pad(x, [(0, batch - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    ll, k = fn(run.params, x, jax.random.fold_in(key, i))
    n = min(batch, images.shape[0] - start)
    log_lik.append(np.asarray(ll)[:n])
    kl.append(np.asarray(k)[:n])
  rate = float(np.mean(np.concatenate(kl)))
  distortion = float(np.mean(-np.concatenate(log_lik)))
  return {"rate": rate, "distortion": distortion,
          "elbo": -(rate + distortion)}


@functools.lru_cache(maxsize=16)
def _jitted_terms(model: VAE):
  def terms(params, x, key):
    t = core.elbo_terms(params, x, key, model=model)
    return t.log_likelihood, jnp.sum(t.kl_per_dim, axis=-1)
  return jax.jit(terms)


def plot_sweep(sweep_dir, seed: int = 0, which: str | int = "best", *,
               rows: Sequence[dict[str, Any]] | None = None,
               members_figures: bool = False, tsne_points: int = 1000,
               num_images: int = 10,
               log: Callable[[str], None] | None = None) -> list[Path]:
  """Draw a sweep's figures into ``sweep_dir/figures/``.

  Members are the subdirectories holding ``config.json``; those with
  ``objective == "autoencoder"`` are baselines, the others VAEs (members
  without a checkpoint yet are skipped, with a note). Writes
  ``rate_distortion.png`` (rows: ``rows`` if given, else every VAE member's
  checkpoint ``which`` evaluated on its test set by :func:`evaluate_member`;
  not ``sweep.csv``, whose numbers are those of the last epoch whatever
  ``which`` is), ``sweep_reconstructions.png`` (one row per beta:
  its lowest-seed member, on ``num_images`` test images of the first), and,
  when an autoencoder member exists, ``latent_scatter.png`` of the VAE
  closest to beta = 1 beside it. With ``members_figures``, also
  :func:`plot_run` of every VAE member (with the autoencoder as baseline).

  Returns:
    The paths written.
  """
  from vae import train
  log = log or (lambda s: None)
  sweep_dir = Path(sweep_dir)
  loaded = []
  for member in runs.member_dirs(sweep_dir):
    try:
      loaded.append((member, train.load_run(member, which)))
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
  out = sweep_dir / FIGURES_DIR
  tests = {m: load_test_set(r.config) for m, r in vaes}
  from vae import sweep as sweep_lib
  if rows is None:
    rows = [{"member": m.name, "beta": float(r.config.beta),
             "seed": int(r.config.seed), "epoch": r.epoch,
             "family": sweep_lib.family(r.config),
             **evaluate_member(r, tests[m].images)} for m, r in vaes]
  # One curve: members that differ only in beta and seed (others, e.g. a
  # demonstration variant, are named in the title instead of averaged in).
  all_rows = rows
  rows = sweep_lib.main_family(rows) if all("family" in r for r in rows) else rows
  left_out = [r["member"] for r in all_rows if r not in rows]
  seeds = {}
  for r in rows:
    seeds[float(r["beta"])] = seeds.get(float(r["beta"]), 0) + 1
  written = [rate_distortion(
      rows, out / "rate_distortion.png",
      title=f"{sweep_dir.resolve().name}: {len(rows)} members, checkpoint "
      f"{which!r} (seeds per beta: "
      f"{', '.join(f'{b:g}: {n}' for b, n in sorted(seeds.items()))})"
      + (f"; left out: {', '.join(left_out)}" if left_out else "")).path]

  # One row per setting (its lowest seed), labelled by beta when beta is
  # all that differs, else by the member's name without its seed.
  per_setting: dict[str, tuple[Path, Any]] = {}
  for m, r in sorted(vaes, key=lambda mr: (float(mr[1].config.beta),
                                           int(mr[1].config.seed), mr[0].name)):
    per_setting.setdefault(sweep_lib.family(r.config) + repr(r.config.beta),
                           (m, r))
  chosen = list(per_setting.values())
  only_beta = len({sweep_lib.family(r.config) for _, r in chosen}) == 1
  labels = [f"beta = {float(r.config.beta):g}" if only_beta else
            (re.sub(r"(^|_)seed\d+", "", m.name).strip("_") or m.name)
            for m, r in chosen]
  root = jax.random.key(seed)
  first = tests[chosen[0][0]]
  shown = first.images[pick_indices(jax.random.fold_in(root, PICK_STREAM),
                                    first.images.shape[0], num_images)]
  written.append(sweep_reconstructions(
      [(float(r.config.beta), r.params, r.model) for _, r in chosen], shown,
      out / "sweep_reconstructions.png", labels=labels,
      title=f"{sweep_dir.resolve().name}: reconstructions, one row per "
      f"{'beta' if only_beta else 'setting'} (checkpoint {which!r}, lowest "
      "seed)").path)

  baseline_dir = aes[0][0] if aes else None
  if aes:
    m, r = min(chosen, key=lambda mr: (abs(math.log(max(
        float(mr[1].config.beta), 1e-12))), float(mr[1].config.beta)))
    ae = aes[0][1]
    written.append(latent_scatter(
        r.params, r.model, tests[m].images, tests[m].labels,
        out / "latent_scatter.png",
        jax.random.fold_in(root, SCATTER_STREAM), (ae.params, ae.model),
        tsne_points=tsne_points,
        names=(f"VAE beta={float(r.config.beta):g} ({m.name})",
               "autoencoder" + ("" if aes[0][0].name == "autoencoder" else
                                f" ({aes[0][0].name})"))).path)
  if members_figures:
    for m, _ in vaes:
      written += plot_run(m, seed, which, baseline=baseline_dir,
                          tsne_points=tsne_points)
  return written
