"""Training objectives: the loss of one batch, the traced settings a sweep
varies, KL schedules (chosen by name), and the metrics reduced on the host.

Two kinds of settings shape the loss:

* :class:`Objective` is *static* (hashable, part of the compiled program):
  which objective, and the pitfall demonstrations.
* :class:`TracedSettings` are *traced* values (beta, free bits, the KL
  schedule and its parameters): members of a sweep that differ only in them
  share one compiled program, and changing them never recompiles.

Metrics are reduced from per-example terms on the host, in float64
(:func:`epoch_metrics`; the test set's: :func:`vae.evals.evaluator.elbo_metrics`),
so that they do not depend
on how XLA emits a reduction for a given number of sweep members.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae.model import bounds, core, likelihoods
from vae import rng
from vae.model.networks import VAE

# Each KL schedule's traced code, fixed by name (not by the order of
# vae.config.KL_SCHEDULES, whose names these are).
KL_SCHEDULE_CODES = {"constant": 0, "linear": 1, "cyclical": 2}


class Objective(NamedTuple):
  """Static description of the training loss (hashable).

  Attributes:
    kind: "vae", "autoencoder" or "iwae".
    reduction: "sum" (correct) or "mean_pixels" (the broken per-pixel mean,
      a demonstration of posterior collapse).
    bernoulli_form: "logits" (exact) or "clipped_probs" (the fragile form).
    num_samples: k, posterior draws per example ("vae": the mean of k
      one-sample ELBO estimates; "iwae": the k-sample importance-weighted
      bound). k = 1 is the one-sample ELBO for both, bit for bit.
    iwae_gradient: "standard" (the reparameterised gradient of the bound)
      or "dreg" (doubly reparameterised, Tucker et al. 2019).
  """

  kind: str = "vae"
  reduction: str = "sum"
  bernoulli_form: str = "logits"
  num_samples: int = 1
  iwae_gradient: str = "standard"

  @classmethod
  def from_config(cls, config) -> "Objective":
    return cls(config.objective, config.reduction, config.bernoulli_form,
               int(config.num_samples), config.iwae_gradient)


class TracedSettings(NamedTuple):
  """Per-member settings that are *traced* values: a sweep over them shares
  one compiled program, and changing them never recompiles. Scalars for one
  run, ``[M]`` arrays for M stacked sweep members.

  Attributes:
    beta: final KL weight.
    free_bits: free-bits floor per latent dimension, nats (0: off).
    kl_schedule: the schedule's code, ``KL_SCHEDULE_CODES[name]``.
    kl_warmup_epochs: ``linear``: epochs to ramp the weight from 0 to beta.
    kl_cycle_epochs: ``cyclical``: length of one cycle, in epochs.
    kl_cycle_ratio: ``cyclical``: fraction of each cycle spent ramping up.
  """

  beta: Any
  free_bits: Any
  kl_schedule: Any
  kl_warmup_epochs: Any
  kl_cycle_epochs: Any
  kl_cycle_ratio: Any


# Config fields that only change traced values (the seed changes keys).
TRACED_FIELDS = ("seed",) + TracedSettings._fields


def traced_settings(config: ml_collections.ConfigDict) -> TracedSettings:
  """The traced settings of one config, as numpy scalars."""
  return TracedSettings(np.float32(config.beta), np.float32(config.free_bits),
                        np.int32(KL_SCHEDULE_CODES[config.kl_schedule]),
                        np.float32(config.kl_warmup_epochs),
                        np.float32(config.kl_cycle_epochs),
                        np.float32(config.kl_cycle_ratio))


def kl_weight(settings: TracedSettings, epochs_done) -> jax.Array:
  """The KL weight after ``epochs_done`` epochs of training (a float: epoch
  - 1 plus the fraction of the current epoch done).

  ``constant``: beta. ``linear`` (Bowman et al. 2016): beta * min(1,
  epochs_done / kl_warmup_epochs). ``cyclical`` (Fu et al. 2019): within each
  cycle of kl_cycle_epochs, a linear ramp from 0 to beta over the first
  kl_cycle_ratio of the cycle, then beta.
  """
  s = settings
  linear = jnp.clip(epochs_done / jnp.maximum(s.kl_warmup_epochs, 1e-9), 0.0, 1.0)
  linear = jnp.where(s.kl_warmup_epochs > 0, linear, 1.0)
  cycle_position = jnp.mod(epochs_done, s.kl_cycle_epochs) / s.kl_cycle_epochs
  cyclical = jnp.clip(cycle_position / s.kl_cycle_ratio, 0.0, 1.0)
  factor = jnp.select([s.kl_schedule == KL_SCHEDULE_CODES["linear"],
                       s.kl_schedule == KL_SCHEDULE_CODES["cyclical"]],
                      [linear, cyclical], 1.0)
  return s.beta * factor


def loss_fn(params, batch_stats, x: jax.Array, key: jax.Array,
            settings: TracedSettings, epochs_done, *, model: VAE,
            objective: Objective):
  """The training objective of one batch, in training mode.

  The negative ELBO with the scheduled KL weight and free bits, the
  autoencoder baseline's reconstruction loss, or (``num_samples`` k > 1) the
  k-sample objectives of :func:`multi_sample_loss`; the pitfall
  demonstrations of :class:`Objective` change this loss only.

  Returns:
    ``(loss, (terms, new_batch_stats))``; ``terms`` holds the per-example
    ``log_likelihood`` ``[B]`` (mean over the k draws), ``kl_per_dim``
    ``[B, latent_dim]`` and, for k > 1, the trained ``bound`` ``[B]``
    (nats).
  """
  if objective.num_samples > 1:
    return multi_sample_loss(params, batch_stats, x, key, settings,
                             epochs_done, model=model, objective=objective)
  terms, batch_stats = core.train_terms(
      params, batch_stats, x, None if objective.kind == "autoencoder" else key,
      model=model, likelihood="bernoulli_clipped"
      if objective.bernoulli_form == "clipped_probs" else None)
  num_data_dims = math.prod(x.shape[-3:])
  loss_log_lik = terms.log_likelihood
  if objective.reduction == "mean_pixels":
    # BROKEN on purpose: a per-pixel mean next to a summed KL weights the
    # KL num_data_dims times too much (the collapse demonstration). Only
    # the loss is broken: the terms returned (and logged) stay in nats.
    loss_log_lik = loss_log_lik / num_data_dims
  metrics = core.metrics_from_terms(loss_log_lik, terms.kl_per_dim,
                                    kl_weight(settings, epochs_done),
                                    num_data_dims, settings.free_bits)
  # k = 1 ("vae" or "iwae"): the bound is the one-sample ELBO, this very
  # loss, and train_elbo records it.
  return metrics["loss"], ({"log_likelihood": terms.log_likelihood,
                            "kl_per_dim": terms.kl_per_dim}, batch_stats)


@jax.custom_vjp
def _scale_cotangent(z: jax.Array, weights: jax.Array) -> jax.Array:
  """Identity on ``z`` ``[k, B, L]``; its cotangent is multiplied by
  ``weights`` ``[k, B]`` (constants), and ``weights`` get none."""
  return z


def _scale_fwd(z, weights):
  return z, weights


def _scale_bwd(weights, g):
  return g * weights[..., None], jnp.zeros_like(weights)


_scale_cotangent.defvjp(_scale_fwd, _scale_bwd)


def multi_sample_loss(params, batch_stats, x: jax.Array, key: jax.Array,
                      settings: TracedSettings, epochs_done, *, model: VAE,
                      objective: Objective):
  """The k-sample objectives (Burda et al. 2015), k = ``num_samples`` > 1.

  Draws ``z_j = mean + exp(logvar / 2) eps_j``, ``eps_j ~ N(0, I)`` from
  :func:`vae.rng.draw_keys` (draw 0 is the one-sample draw), the encoder
  run once and the decoder on all k x B rows.

  * "vae": ``mean_j [-log p(x | z_j)] + kl_weight * KL`` (the analytic KL,
    free bits and KL schedules as for k = 1): the mean of k one-sample ELBO
    estimates, the paper's "VAE k".
  * "iwae": ``-log (1/k) sum_j w_j`` with ``log w_j = log p(x | z_j) +
    log p(z_j) - log q(z_j | x)``, by a logsumexp (stable at any scale). Its
    gradient: "standard", the reparameterised gradient of that expression;
    "dreg", Tucker et al. (2019): decoder ``sum_j w~_j grad log w_j``,
    encoder ``sum_j w~_j^2 dlog w_j/dz_j dz_j/dphi`` with q's parameters
    held constant in log q (``w~`` = normalised weights). Same expectation,
    lower variance for the encoder. beta, free bits and KL schedules are
    refused with "iwae" (:func:`vae.config.validate`).

  Returns:
    As :func:`loss_fn`, with ``bound`` ``[B]``: the k-sample ELBO estimate
    ("vae") or the importance-weighted bound ("iwae"), nats per example.
  """
  k = objective.num_samples
  posterior, batch_stats = core.train_encode(params, batch_stats, x,
                                             model=model)
  eps = jax.vmap(lambda draw_key: jax.random.normal(
      draw_key, posterior.mean.shape, posterior.mean.dtype))(
          rng.draw_keys(key, k))  # [k, B, L]
  std = jnp.exp(0.5 * posterior.logvar)
  z = posterior.mean + std * eps
  likelihood = ("bernoulli_clipped" if objective.bernoulli_form ==
                "clipped_probs" else model.likelihood)
  num_data_dims = math.prod(x.shape[-3:])
  kl = core.kl_per_dim(posterior)

  def log_lik_of(z):
    decoded, stats = core.train_decode(params, batch_stats, z, model=model)
    return likelihoods.log_likelihood(likelihood, decoded, x), stats  # [k, B]

  if objective.kind == "vae":
    log_lik, batch_stats = log_lik_of(z)
    mean_log_lik = jnp.mean(log_lik, axis=0)
    loss_log_lik = mean_log_lik
    if objective.reduction == "mean_pixels":
      loss_log_lik = loss_log_lik / num_data_dims
    metrics = core.metrics_from_terms(loss_log_lik, kl,
                                      kl_weight(settings, epochs_done),
                                      num_data_dims, settings.free_bits)
    bound = mean_log_lik - jnp.sum(kl, -1)
    return metrics["loss"], ({"log_likelihood": mean_log_lik,
                              "kl_per_dim": kl, "bound": bound}, batch_stats)

  mean, logvar = posterior
  if objective.iwae_gradient == "dreg":  # q's parameters held constant in log q
    mean, logvar = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(logvar)

  def log_weights_of(z):
    log_lik, stats = log_lik_of(z)
    if objective.iwae_gradient == "dreg":
      log_q = bounds.log_posterior(z, mean, logvar)
    else:  # (z - mean) / std is eps: the standard estimator's log q
      log_q = bounds.log_posterior_of_draws(eps, logvar)
    return bounds.log_weights(log_lik, z, log_q), log_lik, stats  # [k, B]

  log_w, log_lik, batch_stats = log_weights_of(z)
  bound = jax.nn.logsumexp(log_w, axis=0) - math.log(k)
  if objective.iwae_gradient == "dreg":
    weights = jax.nn.softmax(jax.lax.stop_gradient(log_w), axis=0)
    # The same forward pass again (XLA computes it once), its z carrying the
    # encoder's extra factor w~ in the backward pass; the loss's value is
    # the bound's, its gradient DReG's.
    log_w_dreg, _, batch_stats = log_weights_of(
        _scale_cotangent(z, weights))
    surrogate = -jnp.mean(jnp.sum(weights * log_w_dreg, axis=0))
    loss = (surrogate - jax.lax.stop_gradient(surrogate)
            + jax.lax.stop_gradient(-jnp.mean(bound)))
  else:
    loss = -jnp.mean(bound)
  return loss, ({"log_likelihood": jnp.mean(log_lik, axis=0),
                 "kl_per_dim": kl, "bound": bound}, batch_stats)


def epoch_metrics(terms: dict[str, np.ndarray], free_bits: float,
                  num_data_dims: int, loss_is_negative_bound: bool = False
                  ) -> dict[str, float]:
  """Training metrics of one epoch (one member) from the scanned epoch's
  per-step terms (``log_likelihood [steps, B]``, ``kl_per_dim [steps, B,
  L]``, ``kl_weight [steps]``, ``finite [steps]``): each step's batch
  metrics (with that step's KL weight), averaged over the finite steps, in
  float64 on the host, plus ``kl_weight`` and ``nonfinite_steps``; with a
  ``bound`` ``[steps, B]`` term, also ``bound`` (the trained k-sample
  bound), and ``loss = -bound`` when ``loss_is_negative_bound`` ("iwae")."""
  per_step = core.metrics_from_terms(
      np.asarray(terms["log_likelihood"], np.float64),
      np.asarray(terms["kl_per_dim"], np.float64),
      np.asarray(terms["kl_weight"], np.float64), num_data_dims,
      np.float64(free_bits), xp=np)
  finite = np.asarray(terms["finite"], bool)
  if "bound" in terms:
    per_step["bound"] = np.mean(np.asarray(terms["bound"], np.float64), -1)
    if loss_is_negative_bound:
      per_step["loss"] = -per_step["bound"]
  metrics = {k: float(np.mean(v[finite])) if finite.any() else float("nan")
             for k, v in per_step.items()}
  metrics["kl_weight"] = float(np.mean(terms["kl_weight"]))
  metrics["nonfinite_steps"] = int(np.sum(~finite))
  return metrics

