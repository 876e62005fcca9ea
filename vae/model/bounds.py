"""The k-sample importance-weighted bound of a batch (Burda et al. 2015),
and the one home of its log-weights.

* :func:`log_weights`: ``log w = log p(x | z) + log p(z) - log q(z | x)``,
  with :func:`log_prior` and the two forms of ``log q``
  (:func:`log_posterior`, :func:`log_posterior_of_draws`); the IWAE training
  objective (vae.train.objectives) and the bound below both use them.
* :func:`iwae_bound`: ``log (1/k) sum_i w_i`` with ``z_i ~ q(z | x)``. Its
  expectation rises with k towards log p(x); k = 1 is the ELBO in
  expectation. NLL = -bound. Over a whole dataset it runs batch by batch
  in :func:`vae.evals.evaluator.iwae_dataset`.

Random draws of the bound. Draw ``j`` (0-based) for example ``i`` (its index
in the whole evaluation set) is ``normal(fold_in(fold_in(key, i), j //
SAMPLE_BLOCK), (SAMPLE_BLOCK, latent_dim))[j % SAMPLE_BLOCK]``. So the draws,
hence the results, do not depend on ``batch_size`` or ``chunk_size`` (only the
order of floating-point sums does: results agree to float32 rounding, ~1e-5
nats), and the bound for k uses the first k draws of the bound for any
k' > k.

Memory. The bound of a batch runs over chunks of ``chunk_size`` draws (a
``lax.scan`` keeping a running logsumexp): no array grows with k. With the
defaults (20 examples x 100 draws = 2,000 decoder rows) the working set of
one chunk of the 784-400-20 MLP is about 2,000 x (784 x 3 + 400 x 2 + 20 x
6) x 4 bytes = 26 MB, whatever k.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae.model import core, likelihoods
from vae.model.likelihoods import HALF_LOG_2PI
from vae.model.networks import VAE

SAMPLE_BLOCK = 50  # draws per key; see the module docstring
DEFAULT_CHUNK_SIZE = 100  # draws per scan step (rounded up to SAMPLE_BLOCK)
MAX_K = 2**31 - 1  # draws are counted in int32 inside the compiled bound
# Bytes the bound holds per value of its decoder's output rows ([batch *
# chunk, prod(data_shape)] float32 values, forward only). Measured by peak
# RSS, 784-32-2 on 100 images: 1.5 times one float32 array of those rows
# (batch 100 with chunks of 1000 and of 2000 draws).
EVAL_BYTES_PER_DECODER_VALUE = 2 * 4


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


def check_k(k) -> int:
  if (isinstance(k, bool) or not isinstance(k, (int, np.integer))
      or not 1 <= k <= MAX_K):
    raise ValueError(f"k={k!r} is not accepted: an integer in [1, {MAX_K}] "
                     "(importance samples per example)")
  return int(k)


def chunk_layout(k: int, chunk_size: int = DEFAULT_CHUNK_SIZE
                 ) -> tuple[int, int]:
  """``(chunk, num_chunks)``: draws per scan step and scan length for k draws.

  ``k <= SAMPLE_BLOCK``: one chunk of exactly k draws. Otherwise ``chunk`` is
  ``min(chunk_size, k)`` rounded up to a multiple of SAMPLE_BLOCK and the
  draws past k in the last chunk are computed and masked out.
  """
  k = check_k(k)
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


def log_prior(z: jax.Array) -> jax.Array:
  """``log N(z | 0, I)``, summed over the last (latent) axis: nats."""
  return jnp.sum(-0.5 * jnp.square(z) - HALF_LOG_2PI, -1)


def log_posterior(z: jax.Array, mean: jax.Array, logvar: jax.Array
                  ) -> jax.Array:
  """``log q(z | x) = log N(z | mean, exp(logvar))``, summed over the last
  axis: nats (``mean`` and ``logvar`` broadcast against ``z``)."""
  return jnp.sum(-0.5 * jnp.square(z - mean) * jnp.exp(-logvar)
                 - 0.5 * logvar - HALF_LOG_2PI, -1)


def log_posterior_of_draws(eps: jax.Array, logvar: jax.Array) -> jax.Array:
  """``log q(z | x)`` at the draw ``z = mean + exp(logvar / 2) * eps`` from
  its standard normals ``eps`` (``(z - mean) / std`` is ``eps``): the
  standard estimator's form, summed over the last axis, nats."""
  return jnp.sum(-0.5 * jnp.square(eps) - 0.5 * logvar - HALF_LOG_2PI, -1)


def log_weights(log_likelihood: jax.Array, z: jax.Array, log_q: jax.Array
                ) -> jax.Array:
  """The importance weights of the k-sample bound, ``log w = log p(x | z) +
  log p(z) - log q(z | x)`` (nats), from ``log p(x | z)``, the draws ``z``
  ``[..., L]`` and ``log q`` (:func:`log_posterior` or
  :func:`log_posterior_of_draws`): the one home of the log-weights, for
  training's IWAE objective and for evaluation's bound."""
  return log_likelihood + log_prior(z) - log_q


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
  log_q = log_posterior_of_draws(eps, logvar)
  # x broadcast as [B, 1, ...]: log_likelihood flattens the data axes first,
  # so XLA on CPU fuses the sum in one pass instead of transposing the
  # broadcast x (measured: 2x faster for the 784-400-20 MLP).
  log_lik = likelihoods.log_likelihood(
      model.likelihood, core.decode(params, z, model=model), x[:, None],
      data_ndim=x.ndim - 1)
  return log_weights(log_lik, z, log_q), log_lik


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
  k = check_k(k)
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
