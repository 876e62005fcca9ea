"""Optimizers and learning-rate schedules (optax).

``make_optimizer(config, steps_per_epoch)`` is the one place a config becomes
an ``optax.GradientTransformation``: optional global-norm clipping, then the
optimizer with its learning rate injected (``optax.inject_hyperparams``, so it
is logged and stored in the optimizer state), optionally wrapped in
``optax.apply_if_finite`` (``on_nan="skip"``).
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from vae.config import LR_SCHEDULES, OPTIMIZERS
from vae.errors import ConfigError


def iwae_stage_boundaries(num_epochs: int) -> list[int]:
  """Epochs at which the IWAE schedule (Burda et al. 2015) starts a new stage:
  stage i lasts 3^i epochs with learning rate lr * 10^(-i/7), i = 0..7
  (3,280 epochs in all); a shorter run keeps the stages that fit."""
  boundaries, end = [], 0
  for i in range(8):
    end += 3**i
    if end >= num_epochs:
      break
    boundaries.append(end)
  return boundaries


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the optimizer step count."""
  total = config.num_epochs * steps_per_epoch
  lr = config.learning_rate
  if config.lr_schedule == "constant":
    return optax.constant_schedule(lr)
  if config.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(lr, total)
  if config.lr_schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, config.warmup_epochs * steps_per_epoch, total)
  if config.lr_schedule == "exponential":
    return optax.exponential_decay(lr, total, config.lr_decay_rate)
  if config.lr_schedule == "iwae":
    return optax.piecewise_constant_schedule(lr, {
        b * steps_per_epoch: 10.0 ** (-1.0 / 7.0)
        for b in iwae_stage_boundaries(config.num_epochs)})
  raise ConfigError(
      f"config.lr_schedule={config.lr_schedule!r} is not accepted: one of "
      f"{LR_SCHEDULES}")


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """optax chain: optional global-norm clipping, then the optimizer with its
  learning rate injected (so it is logged and stored in the optimizer state)."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "adam":
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=schedule,
                                               eps=config.adam_eps)
  elif config.optimizer == "adamw":
    opt = optax.inject_hyperparams(optax.adamw)(
        learning_rate=schedule, eps=config.adam_eps,
        weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
  else:
    raise ConfigError(
        f"config.optimizer={config.optimizer!r} is not accepted: one of "
        f"{OPTIMIZERS}")
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  if config.on_nan == "skip":
    opt = optax.apply_if_finite(opt, config.max_skipped_steps)
  return opt


def current_learning_rate(opt_state) -> jax.Array:
  """The learning rate the injected-hyperparams state last used."""
  def has_hyperparams(s):
    return hasattr(s, "hyperparams") and "learning_rate" in s.hyperparams
  for s in jax.tree_util.tree_leaves(opt_state, is_leaf=has_hyperparams):
    if has_hyperparams(s):
      return s.hyperparams["learning_rate"]
  raise ValueError("optimizer state has no injected learning rate")
