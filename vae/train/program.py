"""The compiled programs of a group of runs: init, epoch and evaluation
(the evaluator's test ELBO), vmapped over a leading member axis, jitted
once, and placed on devices; and which configs can share them
(:func:`static_signature`).

A standalone run is a group of one member: the same program as a sweep.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vae import config as config_lib
from vae.evals import evaluator
from vae.train import devices as devices_lib, optim
from vae import rng
from vae.model.networks import VAE, build_model
from vae.train.objectives import (TRACED_FIELDS, Objective, TracedSettings,
                                  traced_settings)
from vae.train.state import TrainState, init_state, stack
from vae.train.step import train_epoch


class Trainer(NamedTuple):
  """The compiled pieces of one group of runs sharing every static setting,
  each vmapped over a leading member axis (built by :func:`make_trainer`).

  Attributes:
    model, optimizer: shared static descriptions.
    init: seeds ``[M]`` -> stacked TrainState.
    train_epoch: (state, images, epoch, train_keys [M], settings [M]) ->
      (state, per-example terms [M, ...]) (see :func:`vae.train.step.train_epoch`).
    evaluation_terms: (params, images, eval_keys [M]) ->
      (log_likelihood [M, N], kl_per_dim [M, N, latent_dim])
      (:func:`vae.evals.evaluator.member_elbo_terms`).
  """

  model: VAE
  optimizer: optax.GradientTransformation
  init: Callable[[jax.Array], TrainState]
  train_epoch: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  evaluation_terms: Callable[..., tuple[jax.Array, jax.Array]]


def make_trainer(config: ml_collections.ConfigDict, num_train: int,
                 devices=None) -> Trainer:
  """Model, optimizer and jitted, member-vmapped init / epoch / evaluation.

  With ``devices`` (more than one; see :func:`vae.train.devices.member_devices`),
  each function runs on every device's block of members
  (:class:`vae.train.devices.PerDevice`).
  """
  model = build_model(config)
  steps_per_epoch = num_train // config.batch_size
  optimizer = optim.make_optimizer(config, steps_per_epoch)
  init = functools.partial(init_state, model=model, optimizer=optimizer,
                           data_shape=config.data_shape)
  epoch_fn = functools.partial(
      train_epoch, model=model, optimizer=optimizer,
      batch_size=config.batch_size, binarize=config.binarize,
      objective=Objective.from_config(config))
  if not members_batch_safely(config):
    epoch_fn = jax.custom_batching.sequential_vmap(epoch_fn)
  init_fn = jax.jit(jax.vmap(init))
  epoch_fn = jax.jit(jax.vmap(epoch_fn, in_axes=(0, None, None, 0, 0)),
                     donate_argnums=0)
  # The evaluator's test ELBO, the members one after another.
  eval_fn = evaluator.member_elbo_terms(model, config.eval_batch_size,
                                        config.objective)
  if devices is not None and len(devices) > 1:
    init_fn, epoch_fn, eval_fn = (devices_lib.PerDevice(fn, devices)
                                  for fn in (init_fn, epoch_fn, eval_fn))
  return Trainer(model, optimizer, init_fn, epoch_fn, eval_fn)


def members_batch_safely(config: ml_collections.ConfigDict) -> bool:
  """Whether a group of this config trains its members as one batched
  (vmapped) program and still gives each member its standalone bits.

  True for MLPs without batch norm: their parameter-gradient products are
  member-count independent (:func:`vae.model.dense.rows_product`). Convolutions
  (vmapped, XLA folds members into feature groups) and batch statistics
  (batch reductions emitted per member count) are not, so those groups run
  their members one after another, each through the standalone program
  (``sequential_vmap``): slower for large sweeps, bitwise by construction.
  """
  return config.architecture == "mlp" and not config.batch_norm


class Group(NamedTuple):
  """A compiled group of stacked members, initialised and placed."""

  trainer: Trainer
  state: TrainState
  keys: rng.MemberKeys
  settings: TracedSettings
  member_sharding: Any  # NamedSharding of the member axis, or None
  replicated: Any  # NamedSharding for arrays every device holds, or None


def start_group(configs: list[ml_collections.ConfigDict], num_train: int,
                devices=None) -> Group:
  """The trainer, initial state, keys and traced settings of members that
  differ only in traced fields, padded with copies of the last member to a
  multiple of the devices they are sharded over (see
  :func:`vae.train.devices.member_devices`)."""
  devices = devices_lib.member_devices(len(configs), devices)
  num_devices = 1 if devices is None else len(devices)
  padded = configs + [configs[-1]] * (-len(configs) % num_devices)
  member_sharding, replicated = devices_lib.member_sharding(devices)
  trainer = make_trainer(configs[0], num_train, devices)
  place = devices_lib.place
  seeds = place(jnp.asarray([c.seed for c in padded], jnp.int32), member_sharding)
  settings = place(stack([traced_settings(c) for c in padded]), member_sharding)
  keys = jax.vmap(rng.member_keys)(seeds)
  state = place(trainer.init(seeds), member_sharding)
  return Group(trainer, state, keys, settings, member_sharding, replicated)


def static_signature(config: ml_collections.ConfigDict) -> str:
  """The config without its traced fields: runs with equal signatures can
  share one compiled program."""
  d = config_lib.config_to_dict(config)
  for field in TRACED_FIELDS + ("sweep",):
    d.pop(field, None)
  return json.dumps(d, sort_keys=True)
