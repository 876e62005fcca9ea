"""Training objectives: the loss of one batch, the traced settings a sweep
varies, KL schedules (chosen by name), and the metrics reduced on the host.

Two kinds of settings shape the loss:

* :class:`Objective` is *static* (hashable, part of the compiled program):
  which objective, and the pitfall demonstrations.
* :class:`TracedSettings` are *traced* values (beta, free bits, the KL
  schedule and its parameters): members of a sweep that differ only in them
  share one compiled program, and changing them never recompiles.

Metrics are reduced from per-example terms on the host, in float64
(:func:`epoch_metrics`, :func:`dataset_metrics`), so that they do not depend
on how XLA emits a reduction for a given number of sweep members.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae import core
from vae.models import VAE

OBJECTIVES = ("vae", "autoencoder")
REDUCTIONS = ("sum", "mean_pixels")
BERNOULLI_FORMS = ("logits", "clipped_probs")
# Each KL schedule's traced code, fixed by name (not by a tuple's order).
KL_SCHEDULE_CODES = {"constant": 0, "linear": 1, "cyclical": 2}
KL_SCHEDULES = tuple(KL_SCHEDULE_CODES)


class Objective(NamedTuple):
  """Static description of the training loss (hashable).

  Attributes:
    kind: "vae" or "autoencoder".
    reduction: "sum" (correct) or "mean_pixels" (the broken per-pixel mean,
      a demonstration of posterior collapse).
    bernoulli_form: "logits" (exact) or "clipped_probs" (the fragile form).
  """

  kind: str = "vae"
  reduction: str = "sum"
  bernoulli_form: str = "logits"

  @classmethod
  def from_config(cls, config) -> "Objective":
    return cls(config.objective, config.reduction, config.bernoulli_form)


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

  The negative ELBO with the scheduled KL weight and free bits, or the
  autoencoder baseline's reconstruction loss; the pitfall demonstrations of
  :class:`Objective` change this loss only.

  Returns:
    ``(loss, ((log_likelihood [B], kl_per_dim [B, latent_dim]),
    new_batch_stats))``.
  """
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
  return metrics["loss"], ((terms.log_likelihood, terms.kl_per_dim),
                           batch_stats)


def epoch_metrics(terms: dict[str, np.ndarray], free_bits: float,
                  num_data_dims: int) -> dict[str, float]:
  """Training metrics of one epoch (one member) from the scanned epoch's
  per-step terms (``log_likelihood [steps, B]``, ``kl_per_dim [steps, B,
  L]``, ``kl_weight [steps]``, ``finite [steps]``): each step's batch
  metrics (with that step's KL weight), averaged over the finite steps, in
  float64 on the host, plus ``kl_weight`` and ``nonfinite_steps``."""
  per_step = core.metrics_from_terms(
      np.asarray(terms["log_likelihood"], np.float64),
      np.asarray(terms["kl_per_dim"], np.float64),
      np.asarray(terms["kl_weight"], np.float64), num_data_dims,
      np.float64(free_bits), xp=np)
  finite = np.asarray(terms["finite"], bool)
  metrics = {k: float(np.mean(v[finite])) if finite.any() else float("nan")
             for k, v in per_step.items()}
  metrics["kl_weight"] = float(np.mean(terms["kl_weight"]))
  metrics["nonfinite_steps"] = int(np.sum(~finite))
  return metrics


def dataset_metrics(log_likelihood: np.ndarray, kl_per_dim: np.ndarray,
                    beta: float, num_data_dims: int) -> dict[str, float]:
  """Metrics over a whole dataset from per-example terms (``[N]`` and
  ``[N, L]``), in float64: nats per example."""
  metrics = core.metrics_from_terms(
      np.asarray(log_likelihood, np.float64),
      np.asarray(kl_per_dim, np.float64), np.float64(beta), num_data_dims,
      xp=np)
  return {k: float(v) for k, v in metrics.items()}
