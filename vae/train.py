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

import functools
import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vae import checkpoint, core, data, runs
from vae import config as config_lib
from vae.models import VAE, build_model, init_params

INIT_STREAM, TRAIN_STREAM, EVAL_STREAM, DATA_STREAM = 0, 1, 2, 3


class TrainState(NamedTuple):
  """Everything that changes during training (a pytree).

  Attributes:
    params: model parameters.
    opt_state: optax state (holds the step count and injected hyperparams).
  """

  params: Any
  opt_state: Any


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
  raise config_lib.ConfigError(
      f"config.lr_schedule={config.lr_schedule!r} is not accepted: one of "
      f"{config_lib.LR_SCHEDULES}")


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """optax chain: optional global-norm clipping, then the optimizer with its
  learning rate injected (so it is logged and stored in the optimizer state)."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "adam":
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
  elif config.optimizer == "adamw":
    opt = optax.inject_hyperparams(optax.adamw)(
        learning_rate=schedule, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
  else:
    raise config_lib.ConfigError(
        f"config.optimizer={config.optimizer!r} is not accepted: one of "
        f"{config_lib.OPTIMIZERS}")
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return opt


def current_learning_rate(opt_state) -> jax.Array:
  """The learning rate the injected-hyperparams state last used."""
  def has_hyperparams(s):
    return hasattr(s, "hyperparams") and "learning_rate" in s.hyperparams
  for s in jax.tree_util.tree_leaves(opt_state, is_leaf=has_hyperparams):
    if has_hyperparams(s):
      return s.hyperparams["learning_rate"]
  raise ValueError("optimizer state has no injected learning rate")


def train_step(state: TrainState, x: jax.Array, key: jax.Array, beta, *,
               model: VAE, optimizer: optax.GradientTransformation
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the batch ``x`` ``[B, H, W, C]``."""
  grads, metrics = jax.grad(
      lambda p: core.elbo(p, x, key, model=model, beta=beta), has_aux=True)(
          state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return TrainState(optax.apply_updates(state.params, updates), opt_state), metrics


def epoch_keys(train_key: jax.Array, epoch) -> tuple[jax.Array, jax.Array]:
  """(shuffle_key, step_keys_root) of one epoch."""
  epoch_key = jax.random.fold_in(train_key, epoch)
  return jax.random.fold_in(epoch_key, 0), jax.random.fold_in(epoch_key, 1)


def train_epoch(state: TrainState, images: jax.Array, epoch, train_key: jax.Array,
                beta, *, model: VAE, optimizer: optax.GradientTransformation,
                batch_size: int, binarize: str = "none"
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One epoch as a single ``lax.scan`` over minibatches.

  Args:
    state: the training state.
    images: ``[N, H, W, C]`` float32 in [0, 1], resident on the device.
    epoch: the epoch number (may be traced).
    train_key: the run's training key stream.
    beta: KL weight (may be traced).
    model, optimizer, batch_size, binarize: static.

  Returns:
    The new state and the mean over steps of each metric.
  """
  num_steps = images.shape[0] // batch_size
  shuffle_key, steps_key = epoch_keys(train_key, epoch)
  order = jax.random.permutation(shuffle_key, images.shape[0])
  batches = order[: num_steps * batch_size].reshape(num_steps, batch_size)

  def body(state, step_and_indices):
    step, indices = step_and_indices
    binarize_key, sample_key = jax.random.split(
        jax.random.fold_in(steps_key, step))
    x = jnp.take(images, indices, axis=0)
    if binarize == "dynamic":
      x = jax.random.bernoulli(binarize_key, x).astype(x.dtype)
    return train_step(state, x, sample_key, beta, model=model,
                      optimizer=optimizer)

  state, metrics = jax.lax.scan(body, state,
                                (jnp.arange(num_steps), batches))
  return state, jax.tree_util.tree_map(jnp.mean, metrics)


def evaluate(params, images: jax.Array, key: jax.Array, beta=1.0, *,
             model: VAE, batch_size: int) -> dict[str, jax.Array]:
  """ELBO metrics over a whole dataset, in nats per example.

  Batches of ``batch_size`` (the last one padded and ignored), one sample per
  example from ``fold_in(key, batch_index)``; results are exact means over all
  ``N`` examples.

  Args:
    params: parameters.
    images: ``[N, H, W, C]``.
    key: PRNG key.
    beta: KL weight for the reported ``loss``.

  Returns:
    The metrics of :func:`vae.core.metrics_from_terms`.
  """
  n = images.shape[0]
  num_batches = -(-n // batch_size)
  padded = jnp.pad(images, [(0, num_batches * batch_size - n)] +
                   [(0, 0)] * (images.ndim - 1))
  padded = padded.reshape((num_batches, batch_size) + images.shape[1:])

  def per_batch(i_and_x):
    i, x = i_and_x
    terms = core.elbo_terms(params, x, jax.random.fold_in(key, i), model=model)
    return terms.log_likelihood, jnp.sum(terms.kl_per_dim, axis=-1)

  log_lik, kl = jax.lax.map(per_batch, (jnp.arange(num_batches), padded))
  return core.metrics_from_terms(log_lik.reshape(-1)[:n], kl.reshape(-1)[:n],
                                 beta, math.prod(images.shape[1:]))


class Trainer(NamedTuple):
  """The compiled pieces of one run (built by :func:`make_trainer`)."""

  model: VAE
  optimizer: optax.GradientTransformation
  init: Callable[[jax.Array], TrainState]
  train_epoch: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  evaluate: Callable[..., dict[str, jax.Array]]


def make_trainer(config: ml_collections.ConfigDict, num_train: int) -> Trainer:
  """Model, optimizer and jitted init / epoch / evaluation for a config."""
  model = build_model(config)
  steps_per_epoch = num_train // config.batch_size
  optimizer = make_optimizer(config, steps_per_epoch)

  def init(key):
    params = init_params(model, key, config.data_shape)
    return TrainState(params, optimizer.init(params))

  epoch_fn = jax.jit(
      functools.partial(train_epoch, model=model, optimizer=optimizer,
                        batch_size=config.batch_size, binarize=config.binarize),
      donate_argnums=0)
  eval_fn = jax.jit(functools.partial(evaluate, model=model,
                                      batch_size=config.eval_batch_size))
  return Trainer(model, optimizer, jax.jit(init), epoch_fn, eval_fn)


def prepare_images(config, dataset: data.Dataset, data_key: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """Device-resident (train, test) images, binarised as the config says.

  ``static``: both sets binarised once. ``dynamic``: train images stay grey
  (re-drawn every step in :func:`train_epoch`), the test set is binarised once
  so test figures are comparable across epochs and runs.
  """
  train = jnp.asarray(dataset.train_images, jnp.float32)
  test = jnp.asarray(dataset.test_images, jnp.float32)
  train_key, test_key = jax.random.split(data_key)
  if config.binarize == "static":
    train = jax.random.bernoulli(train_key, train).astype(jnp.float32)
  if config.binarize in ("static", "dynamic"):
    test = jax.random.bernoulli(test_key, test).astype(jnp.float32)
  return train, test


def _as_floats(prefix: str, metrics: dict[str, jax.Array]) -> dict[str, float]:
  return {f"{prefix}_{k}": float(v) for k, v in metrics.items()}


def fit(config: ml_collections.ConfigDict, workdir: str | Path, *,
        progress: bool = True, log: Callable[[str], None] = print
        ) -> dict[str, Any]:
  """Train (or resume) the run described by ``config`` in ``workdir``.

  Writes the resolved config, provenance, ``metrics.jsonl`` (one record per
  epoch; appended before that epoch's checkpoint is written, and cut back to
  the checkpoint on resume) and checkpoints. A finished run is left as is.

  Returns:
    A summary: ``epoch`` (last), ``best_epoch``, ``final`` (the last metrics
    record), ``resumed_from`` (epoch or None), ``already_finished`` (bool).
  """
  config_lib.validate(config)
  dataset = data.load_dataset(config.dataset, data_dir=config.data_dir or None,
                              manual_dir=config.manual_dir or None)
  config = ml_collections.ConfigDict(config.to_dict())  # resolved copy
  config.data_shape = tuple(int(d) for d in dataset.image_shape)
  if dataset.train_images.shape[0] < config.batch_size:
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size} is not accepted: at most the "
        f"{dataset.train_images.shape[0]} training examples of "
        f"{config.dataset!r}")
  workdir = runs.prepare_workdir(workdir, config)

  root = jax.random.key(config.seed)
  init_key, train_key, eval_key, data_key = (
      jax.random.fold_in(root, s)
      for s in (INIT_STREAM, TRAIN_STREAM, EVAL_STREAM, DATA_STREAM))
  train_images, test_images = prepare_images(config, dataset, data_key)
  trainer = make_trainer(config, train_images.shape[0])
  state = trainer.init(init_key)

  ckpts = checkpoint.Checkpoints(workdir / runs.CHECKPOINT_DIR,
                                 keep_latest=config.keep_checkpoints,
                                 keep_best=1, best_metric="test_elbo")
  start, resumed_from = 1, None
  if ckpts.latest_epoch() is not None:
    resumed_from, restored = ckpts.restore({"state": state, "epoch": np.int32(0)})
    state = restored["state"]
    start = resumed_from + 1
  runs.truncate_metrics(workdir, start - 1)

  if start > config.num_epochs:
    records = runs.read_metrics(workdir)
    log(f"{workdir}: run already finished ({start - 1}/{config.num_epochs} "
        f"epochs); nothing to do.")
    ckpts.close()
    return {"epoch": start - 1, "best_epoch": ckpts.best_epoch(),
            "final": records[-1] if records else None,
            "resumed_from": resumed_from, "already_finished": True}
  if resumed_from is not None:
    log(f"{workdir}: resuming from the checkpoint of epoch {resumed_from}.")

  epochs = range(start, config.num_epochs + 1)
  if progress:
    from tqdm.auto import tqdm
    epochs = tqdm(epochs, initial=start - 1, total=config.num_epochs,
                  desc=Path(workdir).name, unit="epoch", leave=True)
  record = None
  for epoch in epochs:
    t0 = time.perf_counter()
    state, train_metrics = trainer.train_epoch(state, train_images, epoch,
                                               train_key, config.beta)
    train_metrics = jax.device_get(train_metrics)
    t1 = time.perf_counter()
    test_metrics = jax.device_get(
        trainer.evaluate(state.params, test_images, eval_key, config.beta))
    t2 = time.perf_counter()
    record = {"epoch": epoch, **_as_floats("train", train_metrics),
              **_as_floats("test", test_metrics),
              "learning_rate": float(current_learning_rate(state.opt_state)),
              "epoch_s": t1 - t0, "eval_s": t2 - t1}
    runs.append_metrics(workdir, [record])
    if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
      ckpts.save(epoch, {"state": state, "epoch": np.int32(epoch)},
                 metrics={"test_elbo": record["test_elbo"]})
    if progress:
      epochs.set_postfix(test_elbo=f"{record['test_elbo']:.2f}",
                         kl=f"{record['test_kl']:.2f}")
  if progress:
    epochs.close()
  best = ckpts.best_epoch()
  ckpts.close()
  return {"epoch": config.num_epochs, "best_epoch": best, "final": record,
          "resumed_from": resumed_from, "already_finished": False}


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
  """A trained run read back from its workdir (see :func:`load_run`)."""

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
    if which == "best":
      epoch = ckpts.best_epoch()
    elif which == "latest":
      epoch = ckpts.latest_epoch()
    elif isinstance(which, int) and not isinstance(which, bool):
      epoch = which
    else:
      raise runs.RunError(
          f"checkpoint {which!r} is not accepted: 'best', 'latest' or an epoch")
    if epoch is None:
      raise runs.RunError(f"{workdir} has no checkpoint yet")
    model = build_model(config)
    # Shapes only: the optimizer state's structure comes from the config.
    optimizer = make_optimizer(config, 1)
    like = jax.eval_shape(
        lambda: {"state": TrainState(
            *(lambda p: (p, optimizer.init(p)))(
                init_params(model, jax.random.key(0), config.data_shape))),
                 "epoch": jnp.int32(0)})
    epoch, restored = ckpts.restore(like, epoch)
  finally:
    ckpts.close()
  return LoadedRun(config, model, restored["state"].params, int(epoch))
