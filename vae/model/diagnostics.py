"""Latent-space diagnostics, with the one set of thresholds the library uses.

* :func:`active_units`: Burda et al.'s count of latent units whose posterior
  mean varies over the data (``Var_x E_q[z_u] > ACTIVE_UNIT_THRESHOLD``).
* :func:`kl_per_dimension` and :func:`informative_dims`: the mean KL of each
  latent dimension, and those carrying more than ``KL_FLOOR`` nats.
* :func:`mutual_information`: the minibatch estimator of I(x; z) under the
  aggregate posterior of He et al. (2019, "Lagging inference networks"),
  by default with the whole evaluation set as the one minibatch.
* :func:`collapse_diagnosis`: posterior-collapse flags and a sentence saying
  what they mean.

Figures, evaluation and sweep tables all use these functions and thresholds.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae.model import core
from vae.model.likelihoods import HALF_LOG_2PI

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al.: Var_x E_q[z_u] above this
KL_FLOOR = 0.01  # nats: a latent dimension with less mean KL carries nothing
MIN_ACTIVE_UNITS = 1  # fewer active units than this: collapse
MI_CEILING_MARGIN = 0.5  # nats: an MI estimate this close to log M is saturated

MI_ESTIMATOR = (
    "He et al. 2019 (arXiv:1901.05534) minibatch estimator: mean_x "
    "E_q(z|x)[log q(z|x)] - mean_m log q(z_m), one z_m ~ q(z|x_m) per example, "
    "log q(z) = logsumexp_n log q(z|x_n) - log M over the M examples of its "
    "minibatch; at most log M (in expectation)")


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


def informative_dims(kl_per_dim, kl_floor: float = KL_FLOOR) -> int:
  """How many latent dimensions carry more than ``kl_floor`` nats of mean KL
  (``kl_per_dim``: ``[L]``, e.g. :func:`kl_per_dimension`)."""
  return int(np.sum(np.asarray(kl_per_dim) > kl_floor))


@jax.jit
def _mi_draws(key, mean, logvar):
  """One z ~ q(z | x) per example and E_q[log q(z | x)] (analytic), ``[N]``."""
  z = core.sample(key, core.Posterior(mean, logvar))
  neg_entropy = (-mean.shape[-1] * HALF_LOG_2PI -
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
  norm = -0.5 * jnp.sum(logvar, -1) - latent_dim * HALF_LOG_2PI  # [M]

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
