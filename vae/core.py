"""The VAE as pure functions of explicit parameters and explicit keys.

``encode``, ``decode`` and ``reconstruct(key=None)`` are deterministic and take
no key; the only random draw is in :func:`sample`, which cannot run without
one. ``params`` is the plain pytree from :func:`vae.models.init_params`;
``model`` is the static :class:`vae.models.VAE` description.

Reductions, the single convention of the whole library: log-likelihoods are
summed over every data dimension, the KL over every latent dimension, then
both are averaged over the batch. Every figure is in nats per example.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vae import likelihoods
from vae.models import VAE


class Posterior(NamedTuple):
  """Diagonal Gaussian q(z | x).

  Attributes:
    mean: ``[..., latent_dim]`` posterior means.
    logvar: ``[..., latent_dim]`` log-variances (log sigma^2).
  """

  mean: jax.Array
  logvar: jax.Array


def encode(params, x: jax.Array, *, model: VAE) -> Posterior:
  """q(z | x) for images ``x`` ``[..., H, W, C]`` in [0, 1]. No key, no draw."""
  mean, logvar = model.apply({"params": params}, x, method=VAE.encode)
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
  :func:`reconstruct` or :func:`vae.likelihoods.likelihood_mean` for those.
  """
  return model.apply({"params": params}, z, method=VAE.decode)


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


def metrics_from_terms(log_likelihood: jax.Array, kl: jax.Array, beta,
                       num_data_dims: int) -> dict[str, jax.Array]:
  """Batch-averaged metrics, in nats per example, from per-example terms.

  Args:
    log_likelihood: ``[B]`` log p(x | z).
    kl: ``[B]`` KL summed over latent dimensions.
    beta: KL weight (only ``loss`` depends on it).
    num_data_dims: H * W * C, for bits per dimension.

  Returns:
    ``loss`` = mean(-(log_lik - beta * kl)); ``recon`` = mean(-log_lik);
    ``kl``; ``elbo`` = mean(log_lik - kl) (beta-free); ``bits_per_dim`` =
    -elbo / (num_data_dims * ln 2).
  """
  elbo_value = jnp.mean(log_likelihood - kl)
  return {
      "loss": jnp.mean(-(log_likelihood - beta * kl)),
      "recon": jnp.mean(-log_likelihood),
      "kl": jnp.mean(kl),
      "elbo": elbo_value,
      "bits_per_dim": -elbo_value / (num_data_dims * math.log(2.0)),
  }


def elbo(params, x: jax.Array, key: jax.Array, *, model: VAE,
         beta=1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The (beta-weighted) negative ELBO and its parts, for one batch.

  Args:
    params: parameter pytree.
    x: ``[B, H, W, C]`` data in [0, 1].
    key: PRNG key for the reparameterised sample (one z per example).
    model: the static model description.
    beta: KL weight; may be a traced value.

  Returns:
    ``(loss, metrics)``: ``loss`` is the scalar to minimise, and ``metrics``
    holds ``loss``, ``recon``, ``kl``, ``elbo`` and ``bits_per_dim``, each
    the batch mean of per-example values, in nats per example.
  """
  terms = elbo_terms(params, x, key, model=model)
  metrics = metrics_from_terms(terms.log_likelihood,
                               jnp.sum(terms.kl_per_dim, axis=-1), beta,
                               math.prod(x.shape[-3:]))
  return metrics["loss"], metrics
