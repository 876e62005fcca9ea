"""The VAE as pure functions of explicit parameters and explicit keys.

``encode``, ``decode`` and ``reconstruct(key=None)`` are deterministic and take
no key; the only random draw is in :func:`sample`, which cannot run without
one. ``params`` is the plain pytree from :func:`vae.model.networks.init_params`;
``model`` is the static :class:`vae.model.networks.VAE` description.

Reductions, the single convention of the whole library: log-likelihoods are
summed over every data dimension, the KL over every latent dimension, then
both are averaged over the batch. Every figure is in nats per example.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vae.model import likelihoods
from vae.model.networks import VAE


class Posterior(NamedTuple):
  """Diagonal Gaussian q(z | x).

  Attributes:
    mean: ``[..., latent_dim]`` posterior means.
    logvar: ``[..., latent_dim]`` log-variances (log sigma^2).
  """

  mean: jax.Array
  logvar: jax.Array


def variables(params) -> dict:
  """Flax variables from ``params``: the ``params`` collection alone, or (for
  models with batch normalisation) ``{"params": ..., "batch_stats": ...}``."""
  if isinstance(params, dict) and "params" in params:
    return params
  return {"params": params}


def evaluation_params(params, batch_stats) -> Any:
  """What the functions here take as ``params`` from the two collections of
  a trained model: ``params`` alone, or ``{"params", "batch_stats"}`` when
  there are batch statistics (the inverse of :func:`variables`)."""
  if batch_stats:
    return {"params": params, "batch_stats": batch_stats}
  return params


def encode(params, x: jax.Array, *, model: VAE) -> Posterior:
  """q(z | x) for images ``x`` ``[..., H, W, C]`` in [0, 1]. No key, no draw.

  Evaluation mode: batch normalisation, if any, uses its running averages.
  """
  mean, logvar = model.apply(variables(params), x, method=VAE.encode)
  return Posterior(mean, logvar)


def sample(key: jax.Array, posterior: Posterior) -> jax.Array:
  """Reparameterised draw ``z = mean + exp(0.5 * logvar) * eps``, eps ~ N(0, I).

  Args:
    key: a PRNG key.
    posterior: shapes ``[..., latent_dim]``.

  Returns:
    ``[..., latent_dim]`` samples.
  """
  eps = jax.random.normal(key, posterior.mean.shape, posterior.mean.dtype)
  return posterior.mean + jnp.exp(0.5 * posterior.logvar) * eps


def decode(params, z: jax.Array, *, model: VAE) -> likelihoods.NaturalParams:
  """Natural parameters of p(x | z) for ``z`` ``[..., latent_dim]``.

  Bernoulli and continuous Bernoulli: logits ``[..., H, W, C]``; Gaussian:
  ``GaussianParams(mean, log_scale)``. Never probabilities: see
  :func:`reconstruct` or :func:`vae.model.likelihoods.likelihood_mean` for those.
  """
  return model.apply(variables(params), z, method=VAE.decode)


def reconstruct(params, x: jax.Array, key: jax.Array | None = None, *,
                model: VAE) -> jax.Array:
  """Likelihood means E[x | z] ``[..., H, W, C]``, ready to plot.

  With ``key=None``: the deterministic path, z = posterior mean. With a key:
  the stochastic path, z ~ q(z | x). For Bernoulli the result is
  ``sigmoid(decode(params, z))``: probabilities, never logits.
  """
  posterior = encode(params, x, model=model)
  z = posterior.mean if key is None else sample(key, posterior)
  return likelihoods.likelihood_mean(model.likelihood,
                                     decode(params, z, model=model))


def kl_per_dim(posterior: Posterior) -> jax.Array:
  """Analytic KL(q(z | x) || N(0, I)) per latent dimension, in nats.

  ``0.5 * (mean^2 + exp(logvar) - 1 - logvar)``, shape ``[..., latent_dim]``.
  """
  return 0.5 * (jnp.square(posterior.mean) + jnp.exp(posterior.logvar) - 1.0
                - posterior.logvar)


class ElboTerms(NamedTuple):
  """Per-example ELBO ingredients.

  Attributes:
    log_likelihood: ``[B]`` log p(x | z), summed over data dimensions (nats).
    kl_per_dim: ``[B, latent_dim]`` analytic KL per latent dimension (nats).
    posterior: q(z | x), ``[B, latent_dim]`` fields.
  """

  log_likelihood: jax.Array
  kl_per_dim: jax.Array
  posterior: Posterior


def elbo_terms(params, x: jax.Array, key: jax.Array, *, model: VAE) -> ElboTerms:
  """One-sample per-example ELBO terms for a batch ``x`` ``[B, H, W, C]``."""
  posterior = encode(params, x, model=model)
  z = sample(key, posterior)
  log_lik = likelihoods.log_likelihood(model.likelihood,
                                       decode(params, z, model=model), x)
  return ElboTerms(log_lik, kl_per_dim(posterior), posterior)


def train_terms(params, batch_stats, x: jax.Array, key: jax.Array | None, *,
                model: VAE, likelihood: str | None = None
                ) -> tuple[ElboTerms, Any]:
  """Per-example terms in *training* mode, threading batch statistics.

  Batch normalisation (if any) normalises with this batch's statistics and
  updates its running averages; the updated ``batch_stats`` collection is
  returned, never stored anywhere else. ``key=None`` decodes the posterior
  mean (the autoencoder baseline; its KL terms are then zero).

  Args:
    params: the ``params`` collection.
    batch_stats: the ``batch_stats`` collection (``{}`` without batch norm).
    x: ``[B, H, W, C]``.
    key: sampling key, or None for the deterministic code.
    likelihood: log-likelihood form to use instead of the model's (for the
      demonstration of the clipped-probability pitfall).

  Returns:
    (ElboTerms, new batch_stats).
  """
  posterior, batch_stats = train_encode(params, batch_stats, x, model=model)
  z = posterior.mean if key is None else sample(key, posterior)
  decoded, batch_stats = train_decode(params, batch_stats, z, model=model)
  log_lik = likelihoods.log_likelihood(likelihood or model.likelihood,
                                       decoded, x)
  kl = (jnp.zeros_like(posterior.mean) if key is None
        else kl_per_dim(posterior))
  return ElboTerms(log_lik, kl, posterior), batch_stats


def _train_apply(params, batch_stats, inputs, method, model: VAE):
  """``model.apply`` in training mode; returns (output, new batch_stats)."""
  if not batch_stats:
    return model.apply({"params": params}, inputs, True, method=method), {}
  out, updated = model.apply({"params": params, "batch_stats": batch_stats},
                             inputs, True, method=method,
                             mutable=["batch_stats"])
  return out, updated["batch_stats"]


def train_encode(params, batch_stats, x: jax.Array, *, model: VAE
                 ) -> tuple[Posterior, Any]:
  """q(z | x) in training mode: ``(Posterior, new batch_stats)``."""
  (mean, logvar), batch_stats = _train_apply(params, batch_stats, x,
                                             VAE.encode, model)
  return Posterior(mean, logvar), batch_stats


def train_decode(params, batch_stats, z: jax.Array, *, model: VAE):
  """Natural parameters of p(x | z) in training mode (any leading axes of
  ``z``, e.g. ``[k, B, L]`` for k draws): ``(params, new batch_stats)``."""
  return _train_apply(params, batch_stats, z, VAE.decode, model)


def metrics_from_terms(log_likelihood, kl_per_dim, beta, num_data_dims: int,
                       free_bits=0.0, *, xp=jnp) -> dict[str, Any]:
  """Batch-averaged metrics, in nats per example, from per-example terms.

  Args:
    log_likelihood: ``[..., B]`` log p(x | z).
    kl_per_dim: ``[..., B, latent_dim]`` KL per latent dimension.
    beta: KL weight (only ``loss`` depends on it); scalar or ``[...]``.
    num_data_dims: H * W * C, for bits per dimension.
    free_bits: lambda of Kingma et al. (2016), nats per latent dimension: the
      loss uses ``sum_d max(lambda, mean_batch KL_d)`` in place of the mean KL
      (the batch mean is taken before the floor). 0 turns it off.
    xp: the array module (``jax.numpy``, or ``numpy`` to reduce on the host in
      float64).

  Returns:
    ``[...]`` values: ``loss`` = mean(-log_lik) + beta * KL term (the mean
    KL, or its floored form with free bits); ``recon`` = mean(-log_lik);
    ``kl`` = the true mean KL; ``elbo`` = mean(log_lik - kl) (beta- and
    free-bits-free); ``bits_per_dim`` = -elbo / (num_data_dims * ln 2).
  """
  kl = xp.sum(kl_per_dim, axis=-1)
  recon = xp.mean(-log_likelihood, axis=-1)
  mean_kl = xp.mean(kl, axis=-1)
  floored = xp.sum(xp.maximum(free_bits, xp.mean(kl_per_dim, axis=-2)), axis=-1)
  kl_term = xp.where(xp.asarray(free_bits) > 0, floored, mean_kl)
  elbo_value = xp.mean(log_likelihood - kl, axis=-1)
  return {
      "loss": recon + beta * kl_term,
      "recon": recon,
      "kl": mean_kl,
      "elbo": elbo_value,
      "bits_per_dim": -elbo_value / (num_data_dims * math.log(2.0)),
  }


def elbo(params, x: jax.Array, key: jax.Array, *, model: VAE, beta=1.0,
         free_bits=0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The (beta-weighted) negative ELBO and its parts, for one batch.

  Args:
    params: parameter pytree.
    x: ``[B, H, W, C]`` data in [0, 1].
    key: PRNG key for the reparameterised sample (one z per example).
    model: the static model description.
    beta: KL weight; may be a traced value.
    free_bits: free-bits floor per latent dimension in nats (0: off); may be
      traced. See :func:`metrics_from_terms`.

  Returns:
    ``(loss, metrics)``: ``loss`` = mean(-(log_lik - beta * kl)) is the
    scalar to minimise, and ``metrics`` holds ``loss``, ``recon``, ``kl``,
    ``elbo`` and ``bits_per_dim``, each the batch mean of per-example values,
    in nats per example.
  """
  terms = elbo_terms(params, x, key, model=model)
  metrics = metrics_from_terms(terms.log_likelihood, terms.kl_per_dim, beta,
                               math.prod(x.shape[-3:]), free_bits)
  return metrics["loss"], metrics


def autoencoder_loss(params, x: jax.Array, *, model: VAE
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The plain autoencoder baseline: decode the posterior mean, no KL.

  The encoder's mean head is a deterministic code; nothing is sampled and the
  log-variance head is unused. ``loss`` = ``recon`` = mean(-log p(x | mean));
  ``kl`` is reported as 0 and ``elbo`` as ``-recon``, which for an
  autoencoder is *not* a bound on log p(x) (it is a reconstruction score).
  """
  terms = autoencoder_terms(params, x, model=model)
  metrics = metrics_from_terms(terms.log_likelihood, terms.kl_per_dim, 0.0,
                               math.prod(x.shape[-3:]))
  return metrics["loss"], metrics


def autoencoder_terms(params, x: jax.Array, *, model: VAE) -> ElboTerms:
  """Per-example terms of the autoencoder: log p(x | z = posterior mean) and
  a KL of zero (``[B, latent_dim]``)."""
  posterior = encode(params, x, model=model)
  log_lik = likelihoods.log_likelihood(
      model.likelihood, decode(params, posterior.mean, model=model), x)
  return ElboTerms(log_lik, jnp.zeros_like(posterior.mean), posterior)
