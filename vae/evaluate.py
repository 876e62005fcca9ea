"""Evaluation and diagnostics of a trained VAE, on its test set or on any images.

Pure functions of explicit parameters, data and keys, plus :func:`evaluate_run`,
which reads a run directory and writes ``eval.json`` into it. Every figure is
in nats per example unless its name says otherwise (``*_bits_per_dim``).

* :func:`iwae_bound`: the importance-weighted bound of Burda et al. (2015),
  ``log (1/k) sum_i w_i`` with ``log w_i = log p(x | z_i) + log p(z_i) -
  log q(z_i | x)`` and ``z_i ~ q(z | x)``. Its expectation rises with k towards
  log p(x); k = 1 is the ELBO in expectation. NLL = -bound.
* :func:`active_units`: Burda et al.'s count of latent units whose posterior
  mean varies over the data (``Var_x E_q[z_u] > 0.01``).
* :func:`mutual_information`: the minibatch estimator of I(x; z) under the
  aggregate posterior of He et al. (2019, "Lagging inference networks"),
  by default with the whole evaluation set as the one minibatch.
* :func:`collapse_diagnosis`: posterior-collapse flags and a sentence saying
  what they mean.
* rate = mean KL(q(z | x) || p(z)) (analytic), distortion = mean
  -log p(x | z) over the same k draws the bound uses; ELBO = -(rate +
  distortion).

Random draws. Draw ``j`` (0-based) for example ``i`` (its index in the whole
evaluation set) is ``normal(fold_in(fold_in(key, i), j // SAMPLE_BLOCK),
(SAMPLE_BLOCK, latent_dim))[j % SAMPLE_BLOCK]``. So the draws, hence the
results, do not depend on ``batch_size`` or ``chunk_size`` (only the order of
floating-point sums does: results agree to float32 rounding, ~1e-5 nats), and
the bound for k uses the first k draws of the bound for any k' > k. From
``root = jax.random.key(seed)``: ``fold_in(root, IWAE_STREAM)`` feeds the
bound, ``fold_in(root, MI_STREAM)`` the mutual-information draws.

Memory. The bound runs over batches of ``batch_size`` examples (a Python loop
over one compiled function) and, inside, over chunks of ``chunk_size`` draws
(a ``lax.scan`` keeping a running logsumexp): no array grows with k or N
except the images and the per-example results. With the defaults (20
examples x 100 draws = 2,000 decoder rows) the working set of one chunk of the
784-400-20 MLP is about 2,000 x (784 x 3 + 400 x 2 + 20 x 6) x 4 bytes = 26
MB, whatever k and N. Measured on 2 CPU cores: k = 5000 on the 10,000 MNIST
test images peaked at 612 MiB resident (the JAX runtime, the images, and the
MI estimate's [16, N, L] row chunks; ``peak_rss_mib`` in ``eval.json``) and
took 6.5 minutes.
"""

from __future__ import annotations

import functools
import math
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae import core, data, likelihoods, runs, train
from vae.models import VAE

SAMPLE_BLOCK = 50  # draws per key; see the module docstring
DEFAULT_K = 5000  # Burda et al. (2015)
DEFAULT_BATCH_SIZE = 20  # examples per compiled call
DEFAULT_CHUNK_SIZE = 100  # draws per scan step (rounded up to SAMPLE_BLOCK)
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al.: Var_x E_q[z_u] above this
KL_FLOOR = 0.01  # nats: a latent dimension with less mean KL carries nothing
MIN_ACTIVE_UNITS = 1  # fewer active units than this: collapse
MI_CEILING_MARGIN = 0.5  # nats: an MI estimate this close to log M is saturated
IWAE_STREAM, MI_STREAM = 0, 1
EVAL_FILE = "eval.json"

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
MI_ESTIMATOR = (
    "He et al. 2019 (arXiv:1901.05534) minibatch estimator: mean_x "
    "E_q(z|x)[log q(z|x)] - mean_m log q(z_m), one z_m ~ q(z|x_m) per example, "
    "log q(z) = logsumexp_n log q(z|x_n) - log M over the M examples of its "
    "minibatch; at most log M (in expectation)")


# ----------------------------------------------------------------------------
# The importance-weighted bound.
# ----------------------------------------------------------------------------


class IwaeTerms(NamedTuple):
  """Per-example results of :func:`iwae_terms`.

  Attributes:
    bound: ``[B]`` log-mean-exp of the k importance weights (nats); -bound is
      the NLL estimate.
    log_likelihood: ``[B]`` mean over the same k draws of log p(x | z)
      (nats): -distortion; minus the analytic KL it is the ELBO.
    posterior: q(z | x), ``[B, latent_dim]`` fields.
  """

  bound: jax.Array
  log_likelihood: jax.Array
  posterior: core.Posterior


def _check_k(k) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k={k!r} is not accepted: an integer >= 1 (importance "
                     "samples per example)")
  return int(k)


def chunk_layout(k: int, chunk_size: int = DEFAULT_CHUNK_SIZE
                 ) -> tuple[int, int]:
  """``(chunk, num_chunks)``: draws per scan step and scan length for k draws.

  ``k <= SAMPLE_BLOCK``: one chunk of exactly k draws. Otherwise ``chunk`` is
  ``min(chunk_size, k)`` rounded up to a multiple of SAMPLE_BLOCK and the
  draws past k in the last chunk are computed and masked out.
  """
  k = _check_k(k)
  if isinstance(chunk_size, bool) or not isinstance(
      chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size!r} is not accepted: an integer "
                     ">= 1")
  if k <= SAMPLE_BLOCK:
    return k, 1
  chunk = -(-min(int(chunk_size), k) // SAMPLE_BLOCK) * SAMPLE_BLOCK
  return chunk, -(-k // chunk)


def example_keys(key: jax.Array, first_index, batch: int) -> jax.Array:
  """``[batch]`` keys ``fold_in(key, first_index + b)``: one per example."""
  indices = jnp.asarray(first_index, jnp.uint32) + jnp.arange(batch,
                                                             dtype=jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def standard_normals(keys: jax.Array, start, count: int,
                     latent_dim: int) -> jax.Array:
  """Draws ``start .. start + count - 1`` of each example: ``[B, count, L]``.

  Args:
    keys: ``[B]`` per-example keys (:func:`example_keys`).
    start: first draw index, a multiple of SAMPLE_BLOCK (may be traced).
    count: how many draws (static).
    latent_dim: L.
  """
  num_blocks = -(-count // SAMPLE_BLOCK)
  blocks = jnp.asarray(start, jnp.uint32) // SAMPLE_BLOCK + jnp.arange(
      num_blocks, dtype=jnp.uint32)

  def per_example(k):
    return jax.vmap(lambda b: jax.random.normal(
        jax.random.fold_in(k, b), (SAMPLE_BLOCK, latent_dim)))(blocks)

  eps = jax.vmap(per_example)(keys)  # [B, num_blocks, SAMPLE_BLOCK, L]
  return eps.reshape(keys.shape[0], num_blocks * SAMPLE_BLOCK,
                     latent_dim)[:, :count]


def log_importance_weights(params, x: jax.Array, posterior: core.Posterior,
                           eps: jax.Array, *, model: VAE
                           ) -> tuple[jax.Array, jax.Array]:
  """log w and log p(x | z) for ``z = mean + exp(logvar / 2) * eps``.

  Args:
    params: parameters.
    x: ``[B, H, W, C]`` data.
    posterior: q(z | x) of ``x``, ``[B, L]`` fields.
    eps: ``[B, S, L]`` standard normal draws.
    model: the model.

  Returns:
    ``(log_w, log_lik)``, each ``[B, S]`` in nats: ``log_w = log p(x | z) +
    log p(z) - log q(z | x)`` and ``log_lik = log p(x | z)``.
  """
  mean, logvar = posterior.mean[:, None], posterior.logvar[:, None]
  z = mean + jnp.exp(0.5 * logvar) * eps
  log_q = jnp.sum(-0.5 * jnp.square(eps) - 0.5 * logvar - _HALF_LOG_2PI, -1)
  log_prior = jnp.sum(-0.5 * jnp.square(z) - _HALF_LOG_2PI, -1)
  # x broadcast as [B, 1, ...]: log_likelihood flattens the data axes first,
  # so XLA on CPU fuses the sum in one pass instead of transposing the
  # broadcast x (measured: 2x faster for the 784-400-20 MLP).
  log_lik = likelihoods.log_likelihood(
      model.likelihood, core.decode(params, z, model=model), x[:, None],
      data_ndim=x.ndim - 1)
  return log_lik + log_prior - log_q, log_lik


def iwae_terms(params, x: jax.Array, key: jax.Array, k: int, *, model: VAE,
               chunk_size: int = DEFAULT_CHUNK_SIZE, first_index=0
               ) -> IwaeTerms:
  """The k-sample importance-weighted bound of each example, in chunks.

  Encodes once, then scans over chunks of draws keeping a running logsumexp
  (``logaddexp`` of each chunk's logsumexp: exact, stable, -inf safe), so
  memory does not grow with k.

  Args:
    params: parameters.
    x: ``[B, H, W, C]`` data in [0, 1].
    key: the bound's key; example b uses ``fold_in(key, first_index + b)``.
    k: importance samples per example (static, >= 1).
    model: the model (static).
    chunk_size: draws per scan step (static; see :func:`chunk_layout`).
    first_index: index of ``x[0]`` in the whole evaluation set (may be
      traced), so that results do not depend on how a set is batched.

  Returns:
    :class:`IwaeTerms` with ``[B]`` fields in nats per example.
  """
  k = _check_k(k)
  chunk, num_chunks = chunk_layout(k, chunk_size)
  posterior = core.encode(params, x, model=model)
  batch, latent_dim = posterior.mean.shape
  keys = example_keys(key, first_index, batch)

  def body(carry, c):
    log_sum_w, sum_log_lik = carry
    start = c * chunk
    eps = standard_normals(keys, start, chunk, latent_dim)
    log_w, log_lik = log_importance_weights(params, x, posterior, eps,
                                            model=model)
    valid = start + jnp.arange(chunk) < k
    log_w = jnp.where(valid, log_w, -jnp.inf)
    log_sum_w = jnp.logaddexp(log_sum_w, jax.nn.logsumexp(log_w, axis=1))
    sum_log_lik = sum_log_lik + jnp.sum(jnp.where(valid, log_lik, 0.0), 1)
    return (log_sum_w, sum_log_lik), None

  init = (jnp.full((batch,), -jnp.inf, posterior.mean.dtype),
          jnp.zeros((batch,), posterior.mean.dtype))
  (log_sum_w, sum_log_lik), _ = jax.lax.scan(body, init,
                                             jnp.arange(num_chunks))
  return IwaeTerms(log_sum_w - math.log(k), sum_log_lik / k, posterior)


def iwae_bound(params, x: jax.Array, key: jax.Array, k: int, *, model: VAE,
               chunk_size: int = DEFAULT_CHUNK_SIZE, first_index=0
               ) -> jax.Array:
  """``[B]`` importance-weighted bounds log (1/k) sum_i w_i, nats per example.

  See :func:`iwae_terms` (same arguments). NLL = -bound; bits per dimension
  = -bound / (H * W * C * ln 2).
  """
  return iwae_terms(params, x, key, k, model=model, chunk_size=chunk_size,
                    first_index=first_index).bound


@functools.partial(jax.jit, static_argnames=("k", "model", "chunk_size"))
def _iwae_batch(params, x, key, first_index, *, k, model, chunk_size):
  return iwae_terms(params, x, key, k, model=model, chunk_size=chunk_size,
                    first_index=first_index)


def iwae_dataset(params, images, key: jax.Array, k: int, *, model: VAE,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 progress: bool | str = False) -> IwaeTerms:
  """:func:`iwae_terms` over a whole set, batch by batch (one compilation).

  Args:
    params: parameters.
    images: ``[N, H, W, C]`` in [0, 1] (NumPy or JAX).
    key: the bound's key; example i uses ``fold_in(key, i)``.
    k, model, chunk_size: as in :func:`iwae_terms`.
    batch_size: examples per compiled call (the last batch is padded and the
      padding dropped).
    progress: show a progress bar (a string: its label).

  Returns:
    :class:`IwaeTerms` of NumPy arrays: ``[N]`` bounds and mean
    log-likelihoods, ``[N, L]`` posterior fields.
  """
  k = _check_k(k)
  chunk_layout(k, chunk_size)
  if isinstance(batch_size, bool) or not isinstance(
      batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} is not accepted: an integer "
                     ">= 1")
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  if n == 0:
    raise ValueError("images is empty (N = 0); accepted: N >= 1")
  batch_size = min(int(batch_size), n)
  starts = range(0, n, batch_size)
  if progress:
    from tqdm.auto import tqdm
    starts = tqdm(starts, desc=progress if isinstance(progress, str) else
                  "iwae", unit="batch", leave=False)
  parts = []
  for start in starts:
    x = images[start:start + batch_size]
    if x.shape[0] < batch_size:
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - x.shape[0], 0)])
    parts.append(jax.device_get(_iwae_batch(
        params, x, key, jnp.int32(start), k=k, model=model,
        chunk_size=int(chunk_size))))

  def cat(field):
    return np.concatenate([field(p) for p in parts])[:n]

  return IwaeTerms(cat(lambda p: p.bound), cat(lambda p: p.log_likelihood),
                   core.Posterior(cat(lambda p: p.posterior.mean),
                                  cat(lambda p: p.posterior.logvar)))


# ----------------------------------------------------------------------------
# Latent-space diagnostics.
# ----------------------------------------------------------------------------


def active_units(posterior_means, threshold: float = ACTIVE_UNIT_THRESHOLD
                 ) -> tuple[int, np.ndarray]:
  """Burda et al. (2015): unit u is active if ``Var_x E_q[z_u | x]`` > threshold.

  Args:
    posterior_means: ``[N, L]`` posterior means over a data set.
    threshold: the variance threshold (0.01 in the paper).

  Returns:
    ``(count, variances)``: the number of active units and the ``[L]``
    variances over the N examples (population variance, float64).
  """
  means = np.asarray(posterior_means, np.float64)
  if means.ndim != 2 or means.shape[0] < 2:
    raise ValueError(f"posterior_means has shape {list(means.shape)}; "
                     "accepted: [N, latent_dim] with N >= 2")
  variances = means.var(axis=0)
  return int(np.sum(variances > threshold)), variances


_kl_per_dim = jax.jit(core.kl_per_dim)


def kl_per_example_and_dim(posterior: core.Posterior) -> np.ndarray:
  """``[N, L]`` analytic KL(q(z | x) || p(z)) per example and dimension (nats,
  float64)."""
  return np.asarray(_kl_per_dim(core.Posterior(
      jnp.asarray(posterior.mean, jnp.float32),
      jnp.asarray(posterior.logvar, jnp.float32))), np.float64)


def kl_per_dimension(posterior: core.Posterior) -> np.ndarray:
  """``[L]`` mean over examples of the analytic KL per latent dimension (nats).

  Their sum is the rate.
  """
  return kl_per_example_and_dim(posterior).mean(axis=0)


@jax.jit
def _mi_draws(key, mean, logvar):
  """One z ~ q(z | x) per example and E_q[log q(z | x)] (analytic), ``[N]``."""
  z = core.sample(key, core.Posterior(mean, logvar))
  neg_entropy = (-mean.shape[-1] * _HALF_LOG_2PI -
                 0.5 * jnp.sum(1.0 + logvar, -1))
  return z, neg_entropy


@jax.jit
def _log_aggregate_posterior(z, mean, logvar):
  """``[M]`` log (1/M) sum_n q(z_m | x_n) for ``[M, L]`` inputs, row chunks."""
  m, latent_dim = z.shape
  rows = 16
  pad = -m % rows
  z_rows = jnp.pad(z, ((0, pad), (0, 0))).reshape(-1, rows, latent_dim)
  inv_var = jnp.exp(-logvar)
  norm = -0.5 * jnp.sum(logvar, -1) - latent_dim * _HALF_LOG_2PI  # [M]

  def per_rows(zr):  # [rows, L] -> [rows]
    sq = jnp.sum(jnp.square(zr[:, None] - mean[None]) * inv_var[None], -1)
    return jax.nn.logsumexp(norm[None] - 0.5 * sq, axis=1)

  out = jax.lax.map(per_rows, z_rows).reshape(-1)[:m]
  return out - math.log(m)


def mutual_information(posterior: core.Posterior, key: jax.Array, *,
                       batch_size: int | None = None) -> float:
  """I(x; z) under the aggregate posterior: He et al. (2019)'s estimator.

  ``mean_x E_q[log q(z | x)]`` (analytic: ``-L/2 log 2 pi - 1/2 sum(1 +
  logvar)``) minus ``mean_m log q(z_m)``, with one draw ``z_m ~ q(z | x_m)``
  per example and ``q(z) ~ (1/M) sum_n q(z | x_n)`` over the M examples of
  the draw's minibatch. Consecutive minibatches of ``batch_size`` (the last
  may be smaller), averaged weighted by size, as in the authors' code;
  ``None`` takes the whole set as one minibatch (M = N, O(N^2 L) work in row
  chunks). In expectation it is the InfoNCE lower bound on I(x; z) (van den
  Oord et al. 2018), hence at most log M (up to the Monte Carlo error of the
  draws): biased low, and saturated when I(x; z) nears log M.

  Args:
    posterior: ``[N, L]`` means and log-variances over the data set.
    key: the key of the draws (``sample(key, posterior)``).
    batch_size: minibatch size M, or None for N. Minibatches are
      consecutive examples: shuffle sorted data first (mnist_5k's test split
      is sorted by class, which would make each minibatch one digit).

  Returns:
    The estimate, in nats.
  """
  mean = jnp.asarray(posterior.mean, jnp.float32)
  logvar = jnp.asarray(posterior.logvar, jnp.float32)
  n = mean.shape[0]
  size = n if batch_size is None else int(batch_size)
  if size < 1:
    raise ValueError(f"batch_size={batch_size!r} is not accepted: None or an "
                     "integer >= 1")
  z, neg_entropy = _mi_draws(key, mean, logvar)
  neg_entropy = np.asarray(neg_entropy, np.float64)
  log_qz = np.concatenate([
      np.asarray(_log_aggregate_posterior(z[s:s + size], mean[s:s + size],
                                          logvar[s:s + size]), np.float64)
      for s in range(0, n, size)])
  return float(neg_entropy.mean() - log_qz.mean())


def _units(n: int) -> str:
  return f"{n} unit is" if n == 1 else f"{n} units are"


def collapse_diagnosis(active: int, kl_per_dim: Sequence[float], *,
                       min_active_units: int = MIN_ACTIVE_UNITS,
                       kl_floor: float = KL_FLOOR,
                       active_unit_threshold: float = ACTIVE_UNIT_THRESHOLD,
                       posterior_mean_variance: Sequence[float] | None = None
                       ) -> dict[str, Any]:
  """Posterior-collapse flags and a plain-words verdict.

  A run is flagged ``collapsed`` when fewer than ``min_active_units`` units
  are active, or when every latent dimension's mean KL is below
  ``kl_floor`` nats.

  Args:
    active: number of active units (:func:`active_units`).
    kl_per_dim: ``[L]`` mean KL per latent dimension, nats.
    min_active_units: fewer active units than this is collapse.
    kl_floor: nats below which a dimension carries no information.
    active_unit_threshold: the variance threshold used for ``active`` (for
      the message).
    posterior_mean_variance: ``[L]`` variances (names inactive units).

  Returns:
    ``{"collapsed", "too_few_active_units", "all_kl_below_floor",
    "inactive_units", "kl_below_floor_units", "min_active_units",
    "kl_floor_nats", "diagnosis"}``.
  """
  kl = np.asarray(kl_per_dim, np.float64)
  num = kl.shape[0]
  too_few = active < min_active_units
  all_low = bool(np.all(kl < kl_floor))
  low_kl = [int(u) for u in np.flatnonzero(kl < kl_floor)]
  if posterior_mean_variance is not None:
    inactive = [int(u) for u in np.flatnonzero(
        np.asarray(posterior_mean_variance) <= active_unit_threshold)]
  else:
    inactive = None
  rate = float(kl.sum())
  reasons = []
  if too_few:
    reasons.append(f"only {active} of {num} latent units are active (the "
                   f"threshold is {min_active_units}; a unit is active when "
                   f"the variance of its posterior mean over the data exceeds "
                   f"{active_unit_threshold:g})")
  if all_low:
    reasons.append(f"every latent dimension carries less than {kl_floor:g} "
                   f"nats of KL (largest {kl.max():.3g})")
  if reasons:
    diagnosis = "POSTERIOR COLLAPSE: " + "; and ".join(reasons) + ". "
    if all_low or active == 0:
      diagnosis += (f"The rate is {rate:.3g} nats: the encoder's output hardly "
                    "depends on the input, so the decoder ignores z and the "
                    "model is in effect a density model without a latent "
                    "code.")
    else:
      diagnosis += (f"The rate is {rate:.3g} nats, carried by {active} "
                    f"unit(s); {_units(num - active)} unused.")
  else:
    diagnosis = (f"No posterior collapse: {active} of {num} latent units are "
                 f"active and the rate is {rate:.3g} nats.")
    if active < num:
      diagnosis += f" {_units(num - active)} inactive"
      if inactive:
        diagnosis += (f" ({', '.join(map(str, inactive))}), with "
                      f"{float(kl[inactive].sum()):.3g} nats of KL together")
      diagnosis += (": partial collapse, common in VAEs; those units could be "
                    "pruned.")
  return {
      "collapsed": bool(too_few or all_low),
      "too_few_active_units": bool(too_few),
      "all_kl_below_floor": all_low,
      "inactive_units": inactive,
      "kl_below_floor_units": low_kl,
      "min_active_units": int(min_active_units),
      "kl_floor_nats": float(kl_floor),
      "active_unit_threshold": float(active_unit_threshold),
      "diagnosis": diagnosis,
  }


# ----------------------------------------------------------------------------
# Everything at once: on arrays, then on a run directory.
# ----------------------------------------------------------------------------


def evaluate_params(params, images, key: jax.Array, *, model: VAE,
                    k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH_SIZE,
                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                    mi_batch_size: int | None = None,
                    min_active_units: int = MIN_ACTIVE_UNITS,
                    kl_floor: float = KL_FLOOR,
                    active_unit_threshold: float = ACTIVE_UNIT_THRESHOLD,
                    progress: bool | str = False) -> dict[str, Any]:
  """Every evaluation figure of ``params`` on ``images``, as a JSON-ready dict.

  Args:
    params: parameters.
    images: ``[N, H, W, C]`` in [0, 1], already preprocessed (binarised) as
      the model expects; N >= 2.
    key: root key: the bound uses ``fold_in(key, IWAE_STREAM)``, the MI
      estimate ``fold_in(key, MI_STREAM)``.
    model: the model.
    k, batch_size, chunk_size: see :func:`iwae_dataset`.
    mi_batch_size: see :func:`mutual_information`.
    min_active_units, kl_floor, active_unit_threshold: see
      :func:`collapse_diagnosis`.
    progress: show a progress bar over batches (a string: its label).

  Returns:
    ``num_examples``, ``k``, ``nll_nats`` (mean -bound), ``nll_nats_stderr``
    (standard error over examples), ``nll_bits_per_dim``, ``elbo``,
    ``elbo_bits_per_dim``, ``iwae_gain_nats`` (bound - ELBO), ``rate``,
    ``distortion``, ``kl_per_dim``, ``posterior_mean_variance``,
    ``active_units``, ``num_latents``, ``mutual_information`` (+ estimator and
    its ceiling log M), ``collapse`` (flags and ``diagnosis``) and timings
    ``iwae_s``, ``diagnostics_s``.
  """
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  if n < 2:
    raise ValueError(f"images has {n} example(s); accepted: N >= 2 (active "
                     "units and MI need a spread over examples)")
  num_dims = math.prod(images.shape[1:])
  t0 = time.perf_counter()
  terms = iwae_dataset(params, images, jax.random.fold_in(key, IWAE_STREAM), k,
                       model=model, batch_size=batch_size,
                       chunk_size=chunk_size, progress=progress)
  t1 = time.perf_counter()
  bound = terms.bound.astype(np.float64)
  kl = kl_per_example_and_dim(terms.posterior)
  kl_dims, kl_total = kl.mean(0), kl.sum(-1)
  elbo_per_example = terms.log_likelihood.astype(np.float64) - kl_total
  active, variances = active_units(terms.posterior.mean, active_unit_threshold)
  mi_size = n if mi_batch_size is None else min(int(mi_batch_size), n)
  mi = mutual_information(terms.posterior, jax.random.fold_in(key, MI_STREAM),
                          batch_size=mi_batch_size)
  t2 = time.perf_counter()
  to_bits = 1.0 / (num_dims * math.log(2.0))
  nll = float(-bound.mean())
  elbo = float(elbo_per_example.mean())
  return {
      "num_examples": int(n),
      "data_dims": int(num_dims),
      "k": int(k),
      "batch_size": int(min(batch_size, n)),
      "chunk_size": chunk_layout(k, chunk_size)[0],
      "nll_nats": nll,
      "nll_nats_stderr": float(bound.std(ddof=1) / math.sqrt(n)),
      "nll_bits_per_dim": nll * to_bits,
      "elbo": elbo,
      "elbo_bits_per_dim": -elbo * to_bits,
      "iwae_gain_nats": float(bound.mean() - elbo),
      "rate": float(kl_total.mean()),
      "distortion": float(-terms.log_likelihood.astype(np.float64).mean()),
      "kl_per_dim": [float(v) for v in kl_dims],
      "posterior_mean_variance": [float(v) for v in variances],
      "active_units": active,
      "num_latents": int(kl_dims.shape[0]),
      "mutual_information": mi,
      "mutual_information_estimator": MI_ESTIMATOR,
      "mutual_information_batch_size": int(mi_size),
      "mutual_information_max": math.log(mi_size),
      "collapse": collapse_diagnosis(
          active, kl_dims, min_active_units=min_active_units,
          kl_floor=kl_floor, active_unit_threshold=active_unit_threshold,
          posterior_mean_variance=variances),
      "iwae_s": t1 - t0,
      "diagnostics_s": t2 - t1,
  }


def eval_file_name(data_path: str | Path | None = None) -> str:
  """``eval.json`` for the run's own test set, ``eval_<stem>.json`` for a file.

  The stem is the file name without ``.gz``, ``.npy``, ``.npz`` or ``.idx``,
  with characters other than letters, digits, ``.``, ``_`` and ``-`` replaced
  by ``_``: ``t10k-images-idx3-ubyte.gz`` -> ``eval_t10k-images-idx3-ubyte.json``.
  """
  if data_path is None:
    return EVAL_FILE
  stem = Path(data_path).name
  for suffix in (".gz", ".npy", ".npz", ".idx"):
    stem = stem.removesuffix(suffix)
  return f"eval_{re.sub(r'[^A-Za-z0-9._-]', '_', stem) or 'data'}.json"


@functools.lru_cache(maxsize=2)
def _test_images(name: str, data_dir: str | None, manual_dir: str | None
                 ) -> np.ndarray:
  """A dataset's test images, kept for the next sweep member (read-only)."""
  images = data.load_dataset(name, data_dir=data_dir,
                             manual_dir=manual_dir).test_images
  images.flags.writeable = False
  return images


def eval_images(config, data_path: str | Path | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
  """The images a run is evaluated on, preprocessed as the run's test set was.

  Without ``data_path``: the test split of the run's dataset. With it: the
  images of that file (:func:`vae.data.load_images_file`: IDX ``.gz`` or raw,
  ``.npy``, ``.npz``). Either way binarised by :func:`vae.train.prepare_test_images`
  itself, exactly as training binarised its test set (``static`` and
  ``dynamic``: one Bernoulli draw with the data key; ``none``: kept grey).

  Returns:
    ``(images [N, H, W, C] float32, description)``; the description holds
    ``dataset``, ``data_path``, ``split`` and ``binarize``.

  Raises:
    data.DataError: the file or dataset cannot be read, or its image shape is
      not the run's ``data_shape``.
  """
  if data_path is None:
    images = _test_images(config.dataset, config.data_dir or None,
                          config.manual_dir or None)
    source = f"the test split of {config.dataset!r}"
    described = {"dataset": config.dataset, "data_path": None, "split": "test"}
  else:
    images, _ = data.load_images_file(data_path)
    source = f"'{data_path}'"
    described = {"dataset": None, "data_path": str(Path(data_path).resolve()),
                 "split": None}
  shape = tuple(int(d) for d in config.data_shape)
  if tuple(images.shape[1:]) != shape:
    raise data.DataError(
        f"{source}: images of shape {list(images.shape[1:])} do not fit the "
        f"run, which was trained on data_shape {list(shape)}; accepted: "
        f"images of that shape.")
  if images.shape[0] < 2:
    raise data.DataError(f"{source}: {images.shape[0]} image; accepted: at "
                         "least 2 (active units and MI need a spread)")
  test = train.prepare_test_images(config, images)
  described["binarize"] = config.binarize
  return np.asarray(test), described


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, in MiB."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _notes(config) -> list[str]:
  notes = []
  if config.objective != "vae":
    notes.append(
        f"objective={config.objective!r}: the encoder's variance head was not "
        "trained as a posterior, so the NLL, ELBO, rate, MI and collapse "
        "flags do not describe a VAE and are not comparable to VAE runs.")
  if config.likelihood == "bernoulli" and config.binarize == "none":
    notes.append(
        "Bernoulli likelihood on grey-level pixels: log p(x) is a "
        "cross-entropy, not a normalised density of [0, 1]-valued images. "
        "Compare NLLs only between runs on the same data; they are not "
        "comparable to binarised-MNIST results in the literature.")
  if config.likelihood in ("gaussian", "continuous_bernoulli"):
    notes.append(
        f"{config.likelihood} likelihood: a density of continuous pixels in "
        "[0, 1] (no dequantisation), so the NLL can be negative and bits/dim "
        "are not those of 8-bit data.")
  return notes


def _mi_notes(result: dict[str, Any]) -> list[str]:
  ceiling = result["mutual_information_max"]
  if result["mutual_information"] < ceiling - MI_CEILING_MARGIN:
    return []
  return [f"The MI estimate {result['mutual_information']:.3f} nats is near its "
          f"ceiling log M = {ceiling:.3f} (M = "
          f"{result['mutual_information_batch_size']} examples): the "
          "posteriors barely overlap. The estimator is a lower bound in "
          "expectation, so I(x; z) is at least about this much, but it cannot "
          "say how much more."]


def evaluate_run(workdir: str | Path, *, k: int = DEFAULT_K,
                 data_path: str | Path | None = None,
                 checkpoint: str | int = "best", seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 mi_batch_size: int | None = None,
                 min_active_units: int = MIN_ACTIVE_UNITS,
                 kl_floor: float = KL_FLOOR, write: bool = True,
                 progress: bool = False) -> dict[str, Any]:
  """Evaluate one run directory; write the result into it as JSON.

  Loads the asked-for checkpoint (default: the best by test ELBO), the
  images (:func:`eval_images`), computes :func:`evaluate_params` with
  ``jax.random.key(seed)`` and writes ``<workdir>/<eval_file_name(data_path)>``
  atomically. A sweep runner calls this once per member.

  Args:
    workdir: a run directory (holds ``config.json`` and checkpoints).
    k: importance samples per example.
    data_path: external images instead of the run's test set.
    checkpoint: ``'best'``, ``'latest'`` or an epoch.
    seed: the evaluation seed (the same for every run by default, so runs are
      compared on the same draws where their shapes agree).
    batch_size, chunk_size, mi_batch_size, min_active_units, kl_floor: see
      :func:`evaluate_params`.
    write: write the JSON file.
    progress: show a progress bar.

  Returns:
    The dict written: :func:`evaluate_params`'s fields plus ``run``,
    ``checkpoint``, ``epoch``, ``dataset``, ``data_path``, ``split``,
    ``binarize``, ``likelihood``, ``seed``, ``keys``, ``notes``, ``file``,
    ``load_s``, ``total_s``, ``peak_rss_mib`` and ``provenance``.

  Raises:
    runs.RunError: not a run directory, no checkpoint, or not writable.
    checkpoint.CheckpointError: the checkpoint is missing or corrupt.
    data.DataError: the images cannot be used.
  """
  t0 = time.perf_counter()
  workdir = Path(workdir)
  which = runs.parse_checkpoint(checkpoint)
  run = train.load_run(workdir, which)
  images, described = eval_images(run.config, data_path)
  t1 = time.perf_counter()
  label = workdir.name if progress else False
  result = evaluate_params(run.params, images, jax.random.key(seed),
                           model=run.model, k=k, batch_size=batch_size,
                           chunk_size=chunk_size, mi_batch_size=mi_batch_size,
                           min_active_units=min_active_units, kl_floor=kl_floor,
                           progress=label)
  name = eval_file_name(data_path)
  result.update({
      "run": str(workdir.resolve()),
      "checkpoint": which,
      "epoch": run.epoch,
      **described,
      "likelihood": run.config.likelihood,
      "seed": int(seed),
      "keys": (f"root = jax.random.key({seed}); bound: fold_in(root, "
               f"{IWAE_STREAM}), example i, draw j: normal(fold_in(fold_in("
               f"bound_key, i), j // {SAMPLE_BLOCK}), ({SAMPLE_BLOCK}, L))"
               f"[j % {SAMPLE_BLOCK}]; MI draws: fold_in(root, {MI_STREAM}); "
               "binarisation (if any): vae.train.prepare_test_images, as in "
               "training"),
      "notes": _notes(run.config) + _mi_notes(result),
      "file": name,
      "load_s": t1 - t0,
      "total_s": time.perf_counter() - t0,
      "peak_rss_mib": peak_rss_mib(),
      "provenance": runs.provenance(),
  })
  if write:
    try:
      runs.write_json_atomic(workdir / name, result)
    except OSError as e:
      raise runs.RunError(f"cannot write {workdir / name}: {e}") from None
  return result


# ----------------------------------------------------------------------------
# Runs and sweeps; the printed table.
# ----------------------------------------------------------------------------


_COLUMNS = (  # (header, result field, format)
    ("NLL", "nll_nats", "{:.2f}"),
    ("bits/dim", "nll_bits_per_dim", "{:.4f}"),
    ("ELBO", "elbo", "{:.2f}"),
    ("rate", "rate", "{:.2f}"),
    ("distortion", "distortion", "{:.2f}"),
    ("MI", "mutual_information", "{:.2f}"),
)


def format_table(results: Sequence[tuple[str, dict[str, Any] | str]]) -> str:
  """A plain-text table, one row per (name, result or error message).

  Columns: checkpoint epoch, N, k, NLL (nats, -IWAE bound), bits/dim, ELBO,
  rate, distortion, active units, MI, collapse flag; then one line per run
  with its diagnosis (or its error) and notes (a note every run shares is
  printed once).
  """
  width = max([3] + [len(name) for name, _ in results])
  head = (f"{'run':<{width}} {'epoch':>5} {'N':>6} {'k':>5}" +
          "".join(f" {c:>10}" for c, _, _ in _COLUMNS[:5]) +
          f" {'AU':>6} {_COLUMNS[5][0]:>6} {'collapse':>8}")
  lines = [head]
  for name, r in results:
    if isinstance(r, str):
      lines.append(f"{name:<{width}} error")
      continue
    lines.append(
        f"{name:<{width}} {r['epoch']:>5} {r['num_examples']:>6} {r['k']:>5}" +
        "".join(f" {fmt.format(r[key]):>10}" for _, key, fmt in _COLUMNS[:5]) +
        f" {str(r['active_units']) + '/' + str(r['num_latents']):>6}"
        f" {r['mutual_information']:>6.2f}"
        f" {'YES' if r['collapse']['collapsed'] else 'no':>8}")
  lines.append("nats per example; NLL = -IWAE bound (k importance samples); "
               "ELBO = -(rate + distortion); AU = active units; MI in nats.")
  done = [r for _, r in results if not isinstance(r, str)]
  shared = [note for note in (done[0].get("notes", []) if done else [])
            if len(done) > 1 and all(note in r.get("notes", []) for r in done)]
  for name, r in results:
    if isinstance(r, str):
      lines.append(f"{name}: error: {r}")
    else:
      lines.append(f"{name}: {r['collapse']['diagnosis']}")
      lines.extend(f"{name}: note: {note}" for note in r.get("notes", [])
                   if note not in shared)
  lines.extend(f"every run: note: {note}" for note in shared)
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Benchmark.
# ----------------------------------------------------------------------------


def _product_seconds(lhs, rhs, params, repeats: int = 7) -> float:
  """Seconds of one dot_general at these shapes, timed alone (min of repeats)
  as a compiled scan over several distinct left operands."""
  from vae import bench
  steps = int(max(4, min(16, 2**26 // max(1, lhs.size * 4))))
  lhs_stack = jax.random.normal(jax.random.key(0), (steps,) + lhs.shape,
                                lhs.dtype)
  rhs_value = jax.random.normal(jax.random.key(1), rhs.shape, rhs.dtype)

  @jax.jit
  def products(lhs_stack, rhs_value):
    def body(carry, lhs_value):
      return carry, jax.lax.dot_general(
          lhs_value, rhs_value, params["dimension_numbers"],
          preferred_element_type=params.get("preferred_element_type"))
    return jax.lax.scan(body, 0, lhs_stack)[1]

  jax.block_until_ready(products(lhs_stack, rhs_value))
  times = bench._time(products, lhs_stack, rhs_value, repeats=repeats)
  return min(times) / steps


def iwae_floor(params, x_batch, *, model: VAE, k: int, num_examples: int,
               chunk_size: int = DEFAULT_CHUNK_SIZE
               ) -> tuple[float, list[dict[str, Any]]]:
  """Seconds the matrix products of :func:`iwae_dataset` take, timed alone.

  Reads every ``dot_general`` of the encoder (run once per batch) and of one
  chunk of the decoder (run ``num_chunks`` times per batch) from their
  jaxprs, times each alone at its own shapes, and sums them times the number
  of times the bound runs them on ``num_examples`` examples.

  Returns:
    ``(floor seconds, one dict per product with shapes, count and seconds)``.
  """
  from vae import bench
  batch = x_batch.shape[0]
  chunk, num_chunks = chunk_layout(k, chunk_size)
  num_batches = -(-num_examples // batch)
  posterior = core.encode(params, x_batch, model=model)
  eps = jnp.zeros((batch, chunk, posterior.mean.shape[-1]))
  encoder = jax.make_jaxpr(lambda p, x: core.encode(p, x, model=model))(
      params, x_batch)
  decoder = jax.make_jaxpr(lambda p, x, q, e: log_importance_weights(
      p, x, q, e, model=model))(params, x_batch, posterior, eps)
  products = []
  for jaxpr, count, part in ((encoder, num_batches, "encoder"),
                             (decoder, num_batches * num_chunks, "decoder")):
    for lhs, rhs, prm in bench._dot_generals(jaxpr.jaxpr):
      seconds = _product_seconds(lhs, rhs, prm)
      products.append({"part": part, "lhs": list(lhs.shape),
                       "rhs": list(rhs.shape), "count": count,
                       "each_s": seconds, "total_s": seconds * count})
  return sum(p["total_s"] for p in products), products


def iwae_benchmark(workdir: str | Path | None = None, *, k: int = DEFAULT_K,
                   num_examples: int = 1000,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, seed: int = 0,
                   repeats: int = 1,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Seconds for the k-sample bound over ``num_examples`` images, and its floor.

  Times ``repeats`` passes of :func:`iwae_dataset` (after compiling on one
  batch; the fastest is kept) and, in the same process, :func:`iwae_floor`:
  the same matrix products timed alone (fastest of 7). ``ratio`` = seconds /
  floor_s: what the rest (sampling, the likelihood's element-wise work, the
  logsumexp, the loop) costs on top. The 1-minute load averages before and
  after are recorded: on a shared machine other processes inflate a single
  long pass more than the floor's fastest-of-7, and so the ratio.

  Args:
    workdir: a run to benchmark (its best checkpoint and test images, repeated
      if fewer than ``num_examples``); None: a freshly initialised 784-400-20
      Bernoulli MLP (vae.bench.bench_config) on mnist_5k's 1,000 test images
      (timing does not depend on the parameter values).
    k, num_examples, batch_size, chunk_size, seed: as in :func:`evaluate_run`.
    log: called with progress messages.

  Returns:
    ``model``, ``k``, ``num_examples``, ``batch_size``, ``chunk_size``,
    ``compile_s``, ``seconds``, ``samples_per_s``, ``floor_s``, ``ratio``,
    ``floor_products``, ``peak_rss_mib``, ``backend``, ``devices``, ``jax``.
  """
  from vae import bench, models
  log = log or (lambda s: None)
  if workdir is None:
    config = bench.bench_config()
    model = models.build_model(config)
    params = models.init_params(model, jax.random.key(seed), config.data_shape)
    images = data.load_dataset("mnist_5k").test_images
  else:
    run = train.load_run(workdir)
    config, model, params = run.config, run.model, run.params
    images, _ = eval_images(config)
  reps = -(-num_examples // images.shape[0])
  images = np.concatenate([images] * reps)[:num_examples]
  key = jax.random.key(seed)
  batch = min(batch_size, num_examples)
  chunk, _ = chunk_layout(k, chunk_size)

  t0 = time.perf_counter()
  jax.block_until_ready(_iwae_batch(params, images[:batch], key, jnp.int32(0),
                                    k=k, model=model, chunk_size=chunk))
  compile_s = time.perf_counter() - t0
  log(f"compiled and ran one batch in {compile_s:.1f} s; timing "
      f"{num_examples} examples x k={k}")
  load_before = os.getloadavg()[0]
  passes = []
  for _ in range(max(1, int(repeats))):
    t0 = time.perf_counter()
    iwae_dataset(params, images, key, k, model=model, batch_size=batch,
                 chunk_size=chunk)
    passes.append(time.perf_counter() - t0)
    log(f"{passes[-1]:.1f} s")
  seconds = min(passes)
  log("timing the matrix products alone")
  floor_s, products = iwae_floor(params, images[:batch], model=model, k=k,
                                 num_examples=num_examples, chunk_size=chunk)
  widths = "-".join(str(w) for w in (math.prod(config.data_shape),
                                     *config.hidden_sizes, config.latent_dim))
  return {
      "model": f"{widths} {config.likelihood} {config.architecture}",
      "k": int(k),
      "num_examples": int(num_examples),
      "batch_size": int(batch),
      "chunk_size": int(chunk),
      "compile_s": compile_s,
      "seconds": seconds,
      "pass_s": passes,
      "samples_per_s": num_examples * k / seconds,
      "floor_s": floor_s,
      "ratio": seconds / floor_s,
      "floor_products": products,
      "peak_rss_mib": peak_rss_mib(),
      "loadavg_1min": [load_before, os.getloadavg()[0]],
      "cpu_count": os.cpu_count(),
      "backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
      "jax": jax.__version__,
  }
