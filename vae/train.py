"""Training: the optimizer, one train step, a scanned epoch, and ``fit``.

Randomness is a pure function of (seed, epoch, step). From
``root = jax.random.key(seed)`` the named streams are derived with
``jax.random.fold_in``::

  init_key  = fold_in(root, 0)   parameter initialisation
  train_key = fold_in(root, 1)   epoch_key = fold_in(train_key, epoch)
                                   shuffle  = fold_in(epoch_key, 0)
                                   step_key = fold_in(fold_in(epoch_key, 1), step)
                                     -> split into (binarize_key, sample_key)
  eval_key  = fold_in(root, 2)   test ELBO samples (the same every epoch)
  data_key  = fold_in(root, 3)   static binarisation of train/test sets

so a run resumed at epoch k draws exactly what an uninterrupted run draws.
An epoch is one compiled ``jax.lax.scan`` over minibatches gathered from a
device-resident array: no Python loop and no host transfer per step. Each
epoch uses ``N // batch_size`` full batches of a fresh permutation (the
remainder, different each epoch, is left out of that epoch).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vae import checkpoint, core, data, runs, tensorboard
from vae import config as config_lib
from vae.models import VAE, build_model, init_params

INIT_STREAM, TRAIN_STREAM, EVAL_STREAM, DATA_STREAM = 0, 1, 2, 3


class TrainState(NamedTuple):
  """Everything that changes during training (a pytree).

  Attributes:
    params: model parameters (the ``params`` collection).
    opt_state: optax state (holds the step count and injected hyperparams).
    batch_stats: running batch-norm statistics (``{}`` without batch norm);
      threaded explicitly through every training step.
  """

  params: Any
  opt_state: Any
  batch_stats: Any

  def variables(self):
    """What :mod:`vae.core` takes as ``params`` (evaluation mode)."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return self.params


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


KL_SCHEDULES = config_lib.KL_SCHEDULES


class Hyper(NamedTuple):
  """Per-member settings that are *traced* values: a sweep over them shares
  one compiled program, and changing them never recompiles. Scalars for one
  run, ``[M]`` arrays for M stacked sweep members.

  Attributes:
    beta: final KL weight.
    free_bits: free-bits floor per latent dimension, nats (0: off).
    kl_schedule: index into KL_SCHEDULES.
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
TRACED_FIELDS = ("seed",) + Hyper._fields


def hyper_from_config(config: ml_collections.ConfigDict) -> Hyper:
  """The traced settings of one config, as numpy scalars."""
  return Hyper(np.float32(config.beta), np.float32(config.free_bits),
               np.int32(KL_SCHEDULES.index(config.kl_schedule)),
               np.float32(config.kl_warmup_epochs),
               np.float32(config.kl_cycle_epochs),
               np.float32(config.kl_cycle_ratio))


def kl_weight(hyper: Hyper, progress) -> jax.Array:
  """The KL weight after ``progress`` epochs of training (a float: epoch - 1
  plus the fraction of the current epoch done).

  ``constant``: beta. ``linear`` (Bowman et al. 2016): beta * min(1,
  progress / kl_warmup_epochs). ``cyclical`` (Fu et al. 2019): within each
  cycle of kl_cycle_epochs, a linear ramp from 0 to beta over the first
  kl_cycle_ratio of the cycle, then beta.
  """
  linear = jnp.clip(progress / jnp.maximum(hyper.kl_warmup_epochs, 1e-9), 0.0, 1.0)
  linear = jnp.where(hyper.kl_warmup_epochs > 0, linear, 1.0)
  cycle_position = jnp.mod(progress, hyper.kl_cycle_epochs) / hyper.kl_cycle_epochs
  cyclical = jnp.clip(cycle_position / hyper.kl_cycle_ratio, 0.0, 1.0)
  factor = jnp.select([hyper.kl_schedule == 1, hyper.kl_schedule == 2],
                      [linear, cyclical], 1.0)
  return hyper.beta * factor


class MemberKeys(NamedTuple):
  """The named key streams of one run (``[M]`` key arrays when stacked)."""

  init: jax.Array
  train: jax.Array
  eval: jax.Array


def member_keys(seed) -> MemberKeys:
  """Key streams from a seed (may be traced); see the module docstring."""
  root = jax.random.key(seed)
  return MemberKeys(*(jax.random.fold_in(root, s)
                      for s in (INIT_STREAM, TRAIN_STREAM, EVAL_STREAM)))


def data_key() -> jax.Array:
  """The key of static binarisation: fixed, not the run's seed, so every run
  (and every sweep member) sees the same binarised digits, as with a
  published binarised dataset."""
  return jax.random.fold_in(jax.random.key(0), DATA_STREAM)


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
  raise config_lib.ConfigError(
      f"config.lr_schedule={config.lr_schedule!r} is not accepted: one of "
      f"{config_lib.LR_SCHEDULES}")


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
    raise config_lib.ConfigError(
        f"config.optimizer={config.optimizer!r} is not accepted: one of "
        f"{config_lib.OPTIMIZERS}")
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


def loss_fn(params, batch_stats, x: jax.Array, key: jax.Array, hyper: Hyper,
            progress, *, model: VAE, objective: Objective):
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
                                    kl_weight(hyper, progress), num_data_dims,
                                    hyper.free_bits)
  return metrics["loss"], ((terms.log_likelihood, terms.kl_per_dim),
                           batch_stats)


def train_step(state: TrainState, x: jax.Array, key: jax.Array, hyper: Hyper,
               progress, *, model: VAE, optimizer: optax.GradientTransformation,
               objective: Objective = Objective()):
  """One optimizer step on the batch ``x`` ``[B, H, W, C]``.

  Returns:
    The new state, the batch's per-example terms (see :func:`loss_fn`) and
    whether the loss and every gradient were finite (with
    ``config.on_nan="skip"`` the optimizer then skipped the update).
  """
  (loss, (terms, batch_stats)), grads = jax.value_and_grad(
      lambda p: loss_fn(p, state.batch_stats, x, key, hyper, progress,
                        model=model, objective=objective),
      has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  finite = jnp.isfinite(loss) & all_finite(grads)
  return (TrainState(optax.apply_updates(state.params, updates), opt_state,
                     batch_stats), terms, finite)


def all_finite(tree) -> jax.Array:
  """True when the sum of every leaf's elements is finite.

  False for any NaN or infinity (they propagate through a sum), and also when
  a float32 sum overflows (beyond 3.4e38: a diverged run in any case). One
  reading pass over the gradients; ``all(isfinite(g))`` costs about twice
  as much on XLA's CPU backend.
  """
  return jnp.isfinite(sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(tree)))


def epoch_keys(train_key: jax.Array, epoch) -> tuple[jax.Array, jax.Array]:
  """(shuffle_key, step_keys_root) of one epoch."""
  epoch_key = jax.random.fold_in(train_key, epoch)
  return jax.random.fold_in(epoch_key, 0), jax.random.fold_in(epoch_key, 1)


def train_epoch(state: TrainState, images: jax.Array, epoch, train_key: jax.Array,
                hyper: Hyper, *, model: VAE,
                optimizer: optax.GradientTransformation, batch_size: int,
                binarize: str = "none", objective: Objective = Objective()
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One epoch of one run as a single ``lax.scan`` over minibatches.

  Args:
    state: the training state.
    images: ``[N, H, W, C]`` float32 in [0, 1], resident on the device.
    epoch: the epoch number, from 1 (may be traced).
    train_key: the run's training key stream.
    hyper: the run's traced settings (scalars).
    model, optimizer, batch_size, binarize, objective: static.

  Returns:
    The new state and the epoch's per-example terms, for
    :func:`epoch_metrics`: ``log_likelihood`` ``[steps, B]``, ``kl_per_dim``
    ``[steps, B, latent_dim]`` and ``kl_weight`` ``[steps]``. Metrics are
    reduced from these on the host, in float64, so that they do not depend
    on how XLA emits a reduction for a given number of sweep members.
  """
  num_steps = images.shape[0] // batch_size
  shuffle_key, steps_key = epoch_keys(train_key, epoch)
  order = jax.random.permutation(shuffle_key, images.shape[0])
  batches = order[: num_steps * batch_size].reshape(num_steps, batch_size)

  def body(state, step_and_indices):
    step, indices = step_and_indices
    binarize_key, sample_key = jax.random.split(
        jax.random.fold_in(steps_key, step))
    # Rows of [N, H*W*C]: XLA's CPU backend gathers and draws over a flat
    # row faster than over [H, W, C] with its trailing axis of size 1 (the
    # draws are the same: bits are generated in row-major order).
    x = jnp.take(images.reshape(images.shape[0], -1), indices, axis=0)
    if binarize == "dynamic":
      x = jax.random.bernoulli(binarize_key, x).astype(x.dtype)
    x = x.reshape(indices.shape + images.shape[1:])
    progress = (epoch - 1) + step / num_steps
    # Non-finite steps are flagged inside the compiled loop and read once,
    # with the epoch's other outputs: no host sync per step.
    new_state, (log_lik, kl_per_dim), finite = train_step(
        state, x, sample_key, hyper, progress, model=model,
        optimizer=optimizer, objective=objective)
    return new_state, {"log_likelihood": log_lik, "kl_per_dim": kl_per_dim,
                       "kl_weight": kl_weight(hyper, progress),
                       "finite": finite}

  return jax.lax.scan(body, state, (jnp.arange(num_steps), batches))


def epoch_metrics(terms: dict[str, np.ndarray], free_bits: float,
                  num_data_dims: int) -> dict[str, float]:
  """Training metrics of one epoch (one member) from :func:`train_epoch`'s
  terms: each step's batch metrics (with that step's KL weight), averaged
  over steps, in float64 on the host."""
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
  """Metrics over a whole dataset from per-example terms, in float64."""
  metrics = core.metrics_from_terms(
      np.asarray(log_likelihood, np.float64),
      np.asarray(kl_per_dim, np.float64), np.float64(beta), num_data_dims,
      xp=np)
  return {k: float(v) for k, v in metrics.items()}


def evaluation_terms(params, images: jax.Array, key: jax.Array, *, model: VAE,
                     batch_size: int, objective: str = "vae"
                     ) -> tuple[jax.Array, jax.Array]:
  """Per-example log p(x | z) ``[N]`` and KL per dimension ``[N, latent]``.

  Batches of ``batch_size`` (the last one padded and dropped), one sample per
  example from ``fold_in(key, batch_index)``. For the autoencoder, z is the
  encoder's mean and the KL is zero.
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
      terms = core.elbo_terms(params, x, jax.random.fold_in(key, i), model=model)
    return terms.log_likelihood, terms.kl_per_dim

  log_lik, kl_per_dim = jax.lax.map(per_batch, (jnp.arange(num_batches), padded))
  return (log_lik.reshape(-1)[:n],
          kl_per_dim.reshape((-1, kl_per_dim.shape[-1]))[:n])


class Trainer(NamedTuple):
  """The compiled pieces of one group of runs sharing every static setting,
  each vmapped over a leading member axis (built by :func:`make_trainer`).

  Attributes:
    model, optimizer: shared static descriptions.
    init: seeds ``[M]`` -> stacked TrainState.
    train_epoch: (state, images, epoch, train_keys [M], hyper [M]) ->
      (state, per-example terms [M, ...]) (see :func:`train_epoch`).
    evaluation_terms: (params, images, eval_keys [M]) ->
      (log_likelihood [M, N], kl_per_dim [M, N, latent_dim]).
  """

  model: VAE
  optimizer: optax.GradientTransformation
  init: Callable[[jax.Array], TrainState]
  train_epoch: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  evaluation_terms: Callable[..., tuple[jax.Array, jax.Array]]


def make_trainer(config: ml_collections.ConfigDict, num_train: int,
                 devices=None) -> Trainer:
  """Model, optimizer and jitted, member-vmapped init / epoch / evaluation.

  With ``devices`` (more than one; see :func:`member_devices`), each function
  runs on every device's block of members (see :class:`PerDevice`).
  """
  model = build_model(config)
  steps_per_epoch = num_train // config.batch_size
  optimizer = make_optimizer(config, steps_per_epoch)

  def init(seed):
    collections = core.variables(
        init_params(model, member_keys(seed).init, config.data_shape))
    params = collections["params"]
    return TrainState(params, optimizer.init(params),
                      collections.get("batch_stats", {}))

  epoch_fn = functools.partial(
      train_epoch, model=model, optimizer=optimizer,
      batch_size=config.batch_size, binarize=config.binarize,
      objective=Objective.from_config(config))
  eval_fn = functools.partial(evaluation_terms, model=model,
                              batch_size=config.eval_batch_size,
                              objective=config.objective)
  init_fn = jax.jit(jax.vmap(init))
  epoch_fn = jax.jit(jax.vmap(epoch_fn, in_axes=(0, None, None, 0, 0)),
                     donate_argnums=0)
  eval_fn = jax.jit(jax.vmap(eval_fn, in_axes=(0, None, 0)))
  if devices is not None and len(devices) > 1:
    init_fn, epoch_fn, eval_fn = (PerDevice(fn, devices)
                                  for fn in (init_fn, epoch_fn, eval_fn))
  return Trainer(model, optimizer, init_fn, epoch_fn, eval_fn)


class PerDevice:
  """A jitted member-vmapped function run on each device's block of members.

  Array arguments are either sharded over ``devices`` along their leading
  (member) axis with a :class:`jax.sharding.NamedSharding` (see
  :func:`place`) or replicated on them; other arguments are passed as they
  are. Each device runs the *single-device* program on its own block (the calls
  are dispatched asynchronously, so the devices run at once), and the
  results are assembled into global arrays sharded the same way.

  Why not one SPMD program (``jit`` of the sharded arrays, or ``shard_map``)?
  XLA simplifies the partitioned program's optimizer arithmetic differently
  (e.g. Adam's ``a / b / c`` becomes ``a / (b * c)``), so a member would
  differ from its standalone run in the last bits, and training amplifies
  such differences. The single-device program is the one a standalone run
  uses, whose results do not depend on the member count.
  """

  def __init__(self, fn, devices, per_device_fns=None):
    self.fn = fn
    self.sharding = _member_sharding(list(devices))[0]
    self.num_devices = len(devices)
    # This process's devices (all of them on one host), in mesh order.
    self.local_devices = [d for d in devices
                          if d.process_index == jax.process_index()]
    self.fns = per_device_fns or [fn] * len(self.local_devices)

  @staticmethod
  def _block(x, device):
    if not isinstance(x, jax.Array):
      return x
    for shard in x.addressable_shards:
      if shard.device == device:
        return shard.data
    raise ValueError(f"no shard of an argument on {device}")

  def _global(self, *blocks):
    # Blocks are equal (the member count is padded to the device count).
    shape = (blocks[0].shape[0] * self.num_devices,) + blocks[0].shape[1:]
    return jax.make_array_from_single_device_arrays(shape, self.sharding,
                                                    list(blocks))

  def _blocks(self, args) -> list[list[Any]]:
    return [[jax.tree_util.tree_map(lambda x: self._block(x, device), a)
             for a in args] for device in self.local_devices]

  def compile(self, *args) -> "PerDevice":
    """Ahead-of-time compiled for these arguments (one program per device)."""
    return PerDevice(self.fn, self.sharding.mesh.devices.tolist(), [
        self.fn.lower(*block_args).compile()
        for block_args in self._blocks(args)])

  def __call__(self, *args):
    # Every block is taken before any call: a call may donate its blocks.
    outputs = [fn(*block_args)
               for fn, block_args in zip(self.fns, self._blocks(args))]
    return jax.tree_util.tree_map(self._global, *outputs)


def prepare_images(config, dataset: data.Dataset) -> tuple[jax.Array, jax.Array]:
  """Device-resident (train, test) images, binarised as the config says.

  ``static``: both sets binarised once with :func:`data_key`. ``dynamic``:
  train images stay grey (re-drawn every step in :func:`train_epoch`), the
  test set is binarised once (:func:`prepare_test_images`) so test figures
  are comparable across epochs and runs.
  """
  train = jnp.asarray(dataset.train_images, jnp.float32)
  if config.binarize == "static":
    train_key, _ = jax.random.split(data_key())
    train = jax.random.bernoulli(train_key, train).astype(jnp.float32)
  return train, prepare_test_images(config, dataset.test_images)


def prepare_test_images(config, images) -> jax.Array:
  """Held-out images ``[N, H, W, C]`` as a run was evaluated on them:
  binarised once (``static`` or ``dynamic``) with the test half of
  :func:`data_key`, whatever the training set."""
  test = jnp.asarray(images, jnp.float32)
  if config.binarize in ("static", "dynamic"):
    _, test_key = jax.random.split(data_key())
    test = jax.random.bernoulli(test_key, test).astype(jnp.float32)
  return test


def static_signature(config: ml_collections.ConfigDict) -> str:
  """The config without its traced fields: runs with equal signatures can
  share one compiled program."""
  d = runs.config_to_dict(config)
  for field in TRACED_FIELDS + ("sweep",):
    d.pop(field, None)
  return json.dumps(d, sort_keys=True)


def stack(trees: list[Any]) -> Any:
  """Stack pytrees along a new leading member axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Member ``index`` of a stacked pytree."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)


def use_cpu_cores_as_devices(count: int = 0) -> int:
  """Expose ``count`` CPU devices (0: one per core this process may use), so
  that a sweep's member axis is sharded over the cores as over accelerators.

  XLA's CPU backend runs one program's small operations on one core at a
  time; with the members split over one device per core, every core trains
  its share of them. A standalone run uses one device and is unaffected.
  Must be called before JAX starts its backends (the scripts call it first
  thing); ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, if set,
  wins. Returns the count asked for.
  """
  if count < 0:
    raise config_lib.ConfigError(
        f"cpu_devices={count} is not accepted: 0 (one per core) or a positive "
        "count")
  count = count or len(os.sched_getaffinity(0))
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", count)
  return count


def member_devices(num_members: int, devices) -> list | None:
  """The devices a group of ``num_members`` is sharded over: at most one per
  member (a lone run is not padded onto a second device), None for one."""
  if devices is None or min(len(devices), num_members) <= 1:
    return None
  return list(devices)[:num_members]


def _member_sharding(devices):
  """(member-axis sharding, replicated sharding) over a 1-D mesh of
  ``devices``, or Nones for no sharding."""
  if devices is None:
    return None, None
  mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
  return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members")),
          jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def place(tree, sharding):
  """``tree`` put on ``sharding`` (unchanged when it is None)."""
  return tree if sharding is None else jax.device_put(tree, sharding)


class Group(NamedTuple):
  """A compiled group of stacked members, initialised and placed."""

  trainer: Trainer
  state: TrainState
  keys: MemberKeys
  hyper: Hyper
  member_sharding: Any  # NamedSharding of the member axis, or None
  replicated: Any  # NamedSharding for arrays every device holds, or None


def start_group(configs: list[ml_collections.ConfigDict], num_train: int,
                devices=None) -> Group:
  """The trainer, initial state, keys and traced settings of members that
  differ only in traced fields, padded with copies of the last member to a
  multiple of the devices they are sharded over (see :func:`member_devices`)."""
  devices = member_devices(len(configs), devices)
  num_devices = 1 if devices is None else len(devices)
  padded = configs + [configs[-1]] * (-len(configs) % num_devices)
  member_sharding, replicated = _member_sharding(devices)
  trainer = make_trainer(configs[0], num_train, devices)
  seeds = place(jnp.asarray([c.seed for c in padded], jnp.int32), member_sharding)
  hyper = place(stack([hyper_from_config(c) for c in padded]), member_sharding)
  keys = jax.vmap(member_keys)(seeds)
  state = place(trainer.init(seeds), member_sharding)
  return Group(trainer, state, keys, hyper, member_sharding, replicated)


class Interrupted(Exception):
  """Training stopped on request (SIGTERM/SIGINT) after a checkpoint."""

  exit_status = 75  # EX_TEMPFAIL: try again later (re-running resumes)


class Diverged(Exception):
  """A run's loss became non-finite (config.on_nan = "stop")."""

  exit_status = 3


def _restore_members(ckpts: list[checkpoint.Checkpoints], like,
                     log: Callable[[str], None]) -> tuple[int, list[Any]]:
  """The newest epoch every member has a *valid* checkpoint of, and the
  restored states; (0, []) when there is none. A corrupt checkpoint is
  reported and the next older common epoch is tried."""
  common = None
  for c in ckpts:
    epochs = set(c.epochs())
    common = epochs if common is None else common & epochs
  for epoch in sorted(common or (), reverse=True):
    try:
      return epoch, [c.restore(like, epoch)[1]["state"] for c in ckpts]
    except checkpoint.CheckpointError as e:
      log(f"warning: {e}; trying an older checkpoint")
  return 0, []


def _progress_bar(enabled: bool, start: int, total: int, desc: str):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start - 1, desc=desc, unit="epoch")


def fit_members(configs: list[ml_collections.ConfigDict],
                workdirs: list[str | Path], *, devices=None,
                progress: bool = True, desc: str | None = None,
                log: Callable[[str], None] = print,
                should_stop: Callable[[], str | None] | None = None
                ) -> list[dict[str, Any]]:
  """Train (or resume) several runs that differ only in traced fields, as one
  compiled program over a stacked member axis.

  Each member is a complete run in its own workdir, exactly as :func:`fit`
  writes it. With ``devices`` (more than one), the member axis is sharded
  over them (padded with copies of the last member, which are not saved).

  Failures lose nothing: every workdir is locked against a second process;
  when ``should_stop()`` returns a reason (e.g. a signal name) after an
  epoch, every member is checkpointed and :class:`Interrupted` is raised; a
  member whose loss turns non-finite is stopped at that epoch's end and
  marked diverged (``diverged.json``), the others go on.

  Returns:
    One summary per member (see :func:`fit`), with ``status`` "finished" or
    "diverged".
  """
  if not configs or len(configs) != len(workdirs):
    raise ValueError("fit_members needs one workdir per config")
  for config in configs:
    config_lib.validate(config)
  signatures = {static_signature(c) for c in configs}
  if len(signatures) > 1:
    raise config_lib.ConfigError(
        "fit_members: members differ in a field that is not traced; only "
        f"{TRACED_FIELDS} may differ (group the others with vae.sweep)")
  first = configs[0]
  dataset = data.load_dataset(first.dataset, data_dir=first.data_dir or None,
                              manual_dir=first.manual_dir or None)
  resolved = []
  for config in configs:
    config = ml_collections.ConfigDict(config.to_dict())
    config.data_shape = tuple(int(d) for d in dataset.image_shape)
    resolved.append(config)
  configs = resolved
  first = configs[0]
  if dataset.train_images.shape[0] < first.batch_size:
    raise config_lib.ConfigError(
        f"config.batch_size={first.batch_size} is not accepted: at most the "
        f"{dataset.train_images.shape[0]} training examples of "
        f"{first.dataset!r}")
  with contextlib.ExitStack() as stack_of_locks:
    workdirs = [runs.prepare_workdir(w, c) for w, c in zip(workdirs, configs)]
    for w in workdirs:
      stack_of_locks.enter_context(runs.WorkdirLock(w))
    return _train_locked(configs, workdirs, dataset, devices=devices,
                         progress=progress, desc=desc, log=log,
                         should_stop=should_stop)


def _train_locked(configs, workdirs, dataset, *, devices, progress, desc, log,
                  should_stop) -> list[dict[str, Any]]:
  first = configs[0]
  num_real = len(configs)
  train_images, test_images = prepare_images(first, dataset)
  group = start_group(configs, train_images.shape[0], devices)
  trainer, state, keys, hyper = group.trainer, group.state, group.keys, group.hyper
  train_images, test_images = (place(x, group.replicated)
                               for x in (train_images, test_images))
  num_padded = jax.tree_util.tree_leaves(hyper)[0].shape[0]

  ckpts = [checkpoint.Checkpoints(w / runs.CHECKPOINT_DIR,
                                  keep_latest=first.keep_checkpoints,
                                  keep_best=1, best_metric="test_elbo")
           for w in workdirs]
  try:
    like = {"state": unstack(state, 0), "epoch": np.int32(0)}
    resumed_from, restored = _restore_members(ckpts, like, log)
    resumed_from = resumed_from or None
    if resumed_from is not None:
      restored += [restored[-1]] * (num_padded - num_real)
      state = place(stack(restored), group.member_sharding)
    for w in workdirs:
      runs.truncate_metrics(w, resumed_from or 0)
      (w / DIVERGED_FILE).unlink(missing_ok=True)
    return _epochs(configs, workdirs, ckpts, trainer, state, keys, hyper,
                   train_images, test_images, resumed_from, progress=progress,
                   desc=desc, log=log, should_stop=should_stop)
  finally:
    for c in ckpts:
      c.close()


DIVERGED_FILE = "diverged.json"


def _save(ckpt: checkpoint.Checkpoints, workdir: Path, epoch: int, state,
          test_elbo: float) -> None:
  """Checkpoint one member; a failed write names the path and what is kept."""
  try:
    ckpt.save(epoch, {"state": state, "epoch": np.int32(epoch)},
              metrics={"test_elbo": test_elbo})
  except (OSError, checkpoint.CheckpointError) as e:
    kept = ckpt.latest_epoch()
    raise runs.RunError(
        f"the checkpoint of epoch {epoch} could not be written to "
        f"{workdir / runs.CHECKPOINT_DIR}: {e}. "
        + (f"The checkpoint of epoch {kept} is kept; free space (or fix the "
           "directory) and re-run to resume from it." if kept else
           "No earlier checkpoint exists.")) from None


def _epochs(configs, workdirs, ckpts, trainer, state, keys, hyper,
            train_images, test_images, resumed_from, *, progress, desc, log,
            should_stop) -> list[dict[str, Any]]:
  """The epoch loop of a group: train, evaluate, record, checkpoint, and
  stop members that diverge or everything on request."""
  first = configs[0]
  num_real = len(configs)
  start = (resumed_from or 0) + 1
  total = first.num_epochs
  num_data_dims = math.prod(first.data_shape)
  name = desc or workdirs[0].name
  if start > total:
    log(f"{name}: run already finished ({start - 1}/{total} epochs); "
        "nothing to do.")
  elif resumed_from is not None:
    log(f"{name}: resuming from the checkpoint of epoch {resumed_from}.")
  bar = _progress_bar(progress and start <= total, start, total, name)
  last = [None] * num_real
  diverged: dict[int, dict[str, Any]] = {}
  with contextlib.ExitStack() as loggers_stack:
    loggers = [loggers_stack.enter_context(tensorboard.TensorBoardLogger.create(
        w, purge_step=start)) for w in workdirs] if start <= total else []
    for epoch in range(start, total + 1):
      t0 = time.perf_counter()
      state, train_terms = trainer.train_epoch(state, train_images, epoch,
                                               keys.train, hyper)
      train_terms = jax.device_get(train_terms)
      t1 = time.perf_counter()
      test_log_lik, test_kl = jax.device_get(
          trainer.evaluation_terms(state.variables(), test_images, keys.eval))
      t2 = time.perf_counter()
      learning_rates = np.asarray(current_learning_rate(state.opt_state))
      stop_reason = should_stop() if should_stop is not None else None
      save = (epoch % first.checkpoint_every_epochs == 0 or epoch == total
              or stop_reason is not None)
      member_states = jax.device_get(state) if save else None
      for i, workdir in enumerate(workdirs):
        if i in diverged:
          continue
        train_metrics = epoch_metrics(
            {k: v[i] for k, v in train_terms.items()}, configs[i].free_bits,
            num_data_dims)
        test_metrics = dataset_metrics(test_log_lik[i], test_kl[i],
                                       configs[i].beta, num_data_dims)
        skipped = train_metrics.pop("nonfinite_steps")
        if (skipped and configs[i].on_nan == "stop") or not math.isfinite(
            test_metrics["elbo"]):
          diverged[i] = _mark_diverged(workdir, ckpts[i], epoch, skipped,
                                       configs[i].on_nan)
          if num_real > 1:  # a lone run raises Diverged with the message
            log(f"{workdir}: {diverged[i]['message']}")
          continue
        record = {"epoch": epoch,
                  **{f"train_{k}": v for k, v in train_metrics.items()},
                  "train_skipped_steps": skipped,
                  **{f"test_{k}": v for k, v in test_metrics.items()},
                  "learning_rate": float(learning_rates[i]),
                  "epoch_s": t1 - t0, "eval_s": t2 - t1}
        runs.append_metrics(workdir, [record])
        last[i] = record
        if loggers[i].enabled:
          loggers[i].scalars(epoch, record)
          loggers[i].reconstructions(epoch, unstack(state.variables(), i),
                                     trainer.model, test_images[:8],
                                     jax.random.fold_in(keys.eval[i], epoch))
        if save:
          _save(ckpts[i], workdir, epoch, unstack(member_states, i),
                record["test_elbo"])
      if bar is not None:
        bar.update(1)
        if num_real == 1 and last[0] is not None:
          bar.set_postfix(test_elbo=f"{last[0]['test_elbo']:.2f}",
                          kl=f"{last[0]['test_kl']:.2f}")
      if len(diverged) == num_real:
        break
      if stop_reason is not None and epoch < total:
        if bar is not None:
          bar.close()
        raise Interrupted(
            f"{name}: stopped by {stop_reason} after epoch {epoch}/{total}; "
            f"checkpoint saved. Run the same command again to resume.")
  if bar is not None:
    bar.close()
  summaries = []
  for i, (c, workdir) in enumerate(zip(ckpts, workdirs)):
    records = runs.read_metrics(workdir)
    summaries.append({"epoch": records[-1]["epoch"] if records else 0,
                      "best_epoch": c.best_epoch(),
                      "final": records[-1] if records else None,
                      "resumed_from": resumed_from,
                      "already_finished": start > total,
                      "status": "diverged" if i in diverged else "finished",
                      "diverged": diverged.get(i)})
  if num_real == 1 and diverged:
    raise Diverged(f"{workdirs[0]}: {diverged[0]['message']}")
  return summaries


def _mark_diverged(workdir: Path, ckpt: checkpoint.Checkpoints, epoch: int,
                   nonfinite_steps: int, on_nan: str) -> dict[str, Any]:
  """Write ``diverged.json`` for a member whose loss became non-finite."""
  good = ckpt.latest_epoch()
  where = (f"the last good checkpoint is epoch {good} in "
           f"{workdir / runs.CHECKPOINT_DIR}" if good else
           "there is no good checkpoint")
  cause = (f"{nonfinite_steps} step(s) had a non-finite loss or update"
           if nonfinite_steps else "the test ELBO is not finite")
  advice = ("lower config.learning_rate, set config.grad_clip_norm, or set "
            "config.on_nan='skip' to skip non-finite updates"
            if on_nan == "stop" else "lower config.learning_rate or set "
            "config.grad_clip_norm")
  info = {"epoch": epoch, "nonfinite_steps": nonfinite_steps,
          "last_good_checkpoint": good,
          "message": f"diverged in epoch {epoch}: {cause}; {where}. "
                     f"Nothing was saved for epoch {epoch}; {advice}."}
  runs.write_json_atomic(workdir / DIVERGED_FILE, info)
  return info


def fit(config: ml_collections.ConfigDict, workdir: str | Path, *,
        progress: bool = True, log: Callable[[str], None] = print,
        should_stop: Callable[[], str | None] | None = None) -> dict[str, Any]:
  """Train (or resume) the run described by ``config`` in ``workdir``.

  The same compiled program as a sweep, with one member. Writes the
  resolved config, provenance, ``metrics.jsonl`` (one record per epoch;
  appended before that epoch's checkpoint is written, and cut back to the
  checkpoint on resume) and checkpoints. A finished run is left as is.

  Returns:
    A summary: ``epoch`` (last), ``best_epoch``, ``final`` (the last metrics
    record), ``resumed_from`` (epoch or None), ``already_finished`` (bool).
  """
  return fit_members([config], [workdir], progress=progress, log=log,
                     should_stop=should_stop)[0]


def summary_table(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
  """A plain-text table of the final (and best) epoch, in nats per example."""
  cols = ("loss", "recon", "kl", "elbo", "bits_per_dim")
  lines = [f"{'':>18}" + "".join(f"{c:>14}" for c in cols)]
  final = summary["final"]
  rows = [(f"train (epoch {final['epoch']})", "train", final),
          (f"test (epoch {final['epoch']})", "test", final)]
  best = summary.get("best_epoch")
  by_epoch = {r["epoch"]: r for r in records}
  if best is not None and best != final["epoch"] and best in by_epoch:
    rows.append((f"test (best, {best})", "test", by_epoch[best]))
  for label, split, rec in rows:
    lines.append(f"{label:>18}" + "".join(
        f"{rec[f'{split}_{c}']:>14.4f}" for c in cols))
  total = sum(r.get("epoch_s", 0.0) + r.get("eval_s", 0.0) for r in records)
  lines.append(f"nats per example; {len(records)} epochs, "
               f"{total:.1f} s of training and evaluation in metrics.jsonl")
  return "\n".join(lines)


class LoadedRun(NamedTuple):
  """A trained run read back from its workdir (see :func:`load_run`).

  ``params`` is what :mod:`vae.core` takes: the ``params`` collection, or
  ``{"params", "batch_stats"}`` for a model with batch normalisation.
  """

  config: ml_collections.ConfigDict
  model: VAE
  params: Any
  epoch: int


def load_run(workdir: str | Path, which: str | int = "best") -> LoadedRun:
  """Config, model and parameters of a run directory.

  Args:
    workdir: a directory written by :func:`fit`.
    which: ``"best"`` (highest test ELBO among kept checkpoints), ``"latest"``,
      or an epoch number.

  Raises:
    runs.RunError: not a run directory, or it has no checkpoint.
    checkpoint.CheckpointError: the asked-for checkpoint is missing or corrupt.
  """
  config = runs.load_config(workdir)
  ckpts = checkpoint.Checkpoints(Path(workdir) / runs.CHECKPOINT_DIR,
                                 keep_latest=config.keep_checkpoints)
  try:
    which = runs.parse_checkpoint(which)
    epoch = {"best": ckpts.best_epoch, "latest": ckpts.latest_epoch}.get(
        which, lambda: which)()
    if epoch is None:
      raise runs.RunError(f"{workdir} has no checkpoint yet")
    trainer = make_trainer(config, config.batch_size)
    # Shapes only: the state's structure comes from the config.
    like = jax.eval_shape(lambda: {
        "state": unstack(trainer.init(jnp.zeros((1,), jnp.int32)), 0),
        "epoch": jnp.int32(0)})
    epoch, restored = ckpts.restore(like, epoch)
  finally:
    ckpts.close()
  return LoadedRun(config, trainer.model, restored["state"].variables(),
                   int(epoch))


def compare_runs(workdir_a: str | Path, workdir_b: str | Path,
                 which: str | int = "latest") -> dict[str, Any]:
  """How far two runs are apart: parameters and final test ELBO.

  Returns:
    ``max_relative_param_difference`` (max over leaves of
    max|a - b| / max|b|), ``bitwise_params`` (bool), ``test_elbo_a``,
    ``test_elbo_b``, ``test_elbo_difference`` (nats), ``epochs``.
  """
  a, b = load_run(workdir_a, which), load_run(workdir_b, which)
  leaves_a = jax.tree_util.tree_leaves(jax.device_get(a.params))
  leaves_b = jax.tree_util.tree_leaves(jax.device_get(b.params))
  if jax.tree_util.tree_structure(a.params) != jax.tree_util.tree_structure(b.params):
    raise runs.RunError(f"{workdir_a} and {workdir_b} have different models")
  worst = 0.0
  for x, y in zip(leaves_a, leaves_b):
    if x.shape != y.shape:
      raise runs.RunError(f"{workdir_a} and {workdir_b} have different models")
    scale = max(float(np.max(np.abs(y))), 1e-30)
    worst = max(worst, float(np.max(np.abs(x - y))) / scale)
  elbo_a = {r["epoch"]: r["test_elbo"] for r in runs.read_metrics(workdir_a)}
  elbo_b = {r["epoch"]: r["test_elbo"] for r in runs.read_metrics(workdir_b)}
  return {"epochs": [a.epoch, b.epoch],
          "max_relative_param_difference": worst,
          "bitwise_params": all(np.array_equal(x, y)
                                for x, y in zip(leaves_a, leaves_b)),
          "test_elbo_a": elbo_a.get(a.epoch), "test_elbo_b": elbo_b.get(b.epoch),
          "test_elbo_difference": abs(elbo_a.get(a.epoch, np.nan) -
                                      elbo_b.get(b.epoch, np.nan))}
