"""The arrays a picture shows: tiles, likelihood means, latent grids, 2-D
projections. No matplotlib here (:mod:`vae.viz.plots` draws these arrays), so
they are usable and testable without it.

Every image is a likelihood mean E[x | z] (for Bernoulli: pixel
probabilities), never logits; :func:`for_display` clips to [0, 1] for display
only (this matters for Gaussian means alone).
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp
import numpy as np

from vae.model import core, likelihoods
from vae.model.networks import VAE

PAD_VALUE = 0.5  # grey lines between tiles: neither ink (1) nor paper (0)


def tile(images, rows: int, cols: int, *, pad: int = 1,
         pad_value: float = PAD_VALUE) -> np.ndarray:
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
                             PAD_VALUE, np.float32))
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


def manifold_latents(n: int = 20, lo: float = 0.05, hi: float = 0.95
                     ) -> np.ndarray:
  """The manifold's latent grid, float32 ``[n, n, 2]``: ``[i, j] =
  (q[j], q[n - 1 - i])`` with ``q = norm.ppf(linspace(lo, hi, n))``, so z_1
  grows to the right and z_2 upwards."""
  q = normal_quantiles(n, lo, hi)
  z1, z2 = np.meshgrid(q, q[::-1])
  return np.stack([z1, z2], axis=-1).astype(np.float32)


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
