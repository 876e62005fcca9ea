"""Per-example bounds on log p(x) over a whole dataset: the one-sample ELBO
(the test ELBO training logs, and every figure and sweep row built from it)
and the k-sample importance-weighted bound (Burda et al. 2015).

* :func:`dataset_elbo_terms`: per-example log p(x | z) and KL per dimension
  of one posterior sample per example, in batches keyed by
  :func:`vae.rng.batch_key`. Training evaluates its test set with it every
  epoch (vmapped over members); everything else that reports a test ELBO,
  rate or distortion reads what training logged.
* :func:`iwae_bound`: ``log (1/k) sum_i w_i`` with ``log w_i = log p(x | z_i)
  + log p(z_i) - log q(z_i | x)`` and ``z_i ~ q(z | x)``. Its expectation
  rises with k towards log p(x); k = 1 is the ELBO in expectation.
  NLL = -bound.

Random draws of the bound. Draw ``j`` (0-based) for example ``i`` (its index
in the whole evaluation set) is ``normal(fold_in(fold_in(key, i), j //
SAMPLE_BLOCK), (SAMPLE_BLOCK, latent_dim))[j % SAMPLE_BLOCK]``. So the draws,
hence the results, do not depend on ``batch_size`` or ``chunk_size`` (only the
order of floating-point sums does: results agree to float32 rounding, ~1e-5
nats), and the bound for k uses the first k draws of the bound for any
k' > k.

Memory. The bound runs over batches of ``batch_size`` examples (a Python loop
over one compiled function) and, inside, over chunks of ``chunk_size`` draws
(a ``lax.scan`` keeping a running logsumexp): no array grows with k or N
except the images and the per-example results. With the defaults (20
examples x 100 draws = 2,000 decoder rows) the working set of one chunk of the
784-400-20 MLP is about 2,000 x (784 x 3 + 400 x 2 + 20 x 6) x 4 bytes = 26
MB, whatever k and N.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae import core, devices, likelihoods, rng
from vae.models import VAE

SAMPLE_BLOCK = 50  # draws per key; see the module docstring
DEFAULT_K = 5000  # Burda et al. (2015)
DEFAULT_BATCH_SIZE = 20  # examples per compiled call
DEFAULT_CHUNK_SIZE = 100  # draws per scan step (rounded up to SAMPLE_BLOCK)
MAX_K = 2**31 - 1  # draws are counted in int32 inside the compiled bound
# Bytes the bound holds per value of its decoder's output rows ([batch *
# chunk, prod(data_shape)] float32 values, forward only). Measured by peak
# RSS, 784-32-2 on 100 images: 1.5 times one float32 array of those rows
# (batch 100 with chunks of 1000 and of 2000 draws).
EVAL_BYTES_PER_DECODER_VALUE = 2 * 4

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def dataset_elbo_terms(params, images: jax.Array, key: jax.Array, *,
                       model: VAE, batch_size: int, objective: str = "vae"
                       ) -> tuple[jax.Array, jax.Array]:
  """Per-example log p(x | z) ``[N]`` and KL per dimension ``[N, latent]``.

  Batches of ``batch_size`` (the last one padded and dropped), one sample per
  example from ``rng.batch_key(key, batch_index)``. For the autoencoder, z is
  the encoder's mean and the KL is zero.
  """
  n = images.shape[0]
  num_batches = -(-n // batch_size)
  padded = jnp.pad(images, [(0, num_batches * batch_size - n)] +
                   [(0, 0)] * (images.ndim - 1))
  padded = padded.reshape((num_batches, batch_size) + images.shape[1:])

  def per_batch(i_and_x):
    i, x = i_and_x
    if objective == "autoencoder":
      terms = core.autoencoder_terms(params, x, model=model)
    else:
      terms = core.elbo_terms(params, x, rng.batch_key(key, i), model=model)
    return terms.log_likelihood, terms.kl_per_dim

  log_lik, kl_per_dim = jax.lax.map(per_batch, (jnp.arange(num_batches), padded))
  return (log_lik.reshape(-1)[:n],
          kl_per_dim.reshape((-1, kl_per_dim.shape[-1]))[:n])


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

  Raises:
    ValueError: k, chunk_size or batch_size not accepted, or no images.
    ConfigError: a batch's decoder rows (batch x draws per step x pixels,
      EVAL_BYTES_PER_DECODER_VALUE bytes each) cannot fit in the memory
      available (:func:`vae.devices.check_memory`); before compiling.
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
  chunk, _ = chunk_layout(k, chunk_size)
  values = math.prod(images.shape[1:])
  devices.check_memory(  # refused before compiling: XLA would abort
      batch_size * chunk * values * EVAL_BYTES_PER_DECODER_VALUE,
      f"the k-sample bound with batch_size={batch_size} and {chunk} draws "
      f"per step (chunk_size={chunk_size}; batch_size x draws x {values} "
      f"values x 4 bytes x {EVAL_BYTES_PER_DECODER_VALUE // 4})",
      "lower batch_size or chunk_size")
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
