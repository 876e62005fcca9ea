"""One optimizer step, and one epoch of steps as a single ``lax.scan``.

An epoch is one compiled ``jax.lax.scan`` over minibatches gathered from a
device-resident array: no Python loop and no host transfer per step. Each
epoch uses ``N // batch_size`` full batches of a fresh permutation (the
remainder, different each epoch, is left out of that epoch). The keys of
the shuffle, the binarisation and the reparameterisation come from
:mod:`vae.rng` (epoch and step streams).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vae import rng
from vae.model.networks import VAE
from vae.train.objectives import Objective, TracedSettings, kl_weight, loss_fn
from vae.train.state import TrainState


def all_finite(tree) -> jax.Array:
  """True when the sum of every leaf's elements is finite.

  False for any NaN or infinity (they propagate through a sum), and also when
  a float32 sum overflows (beyond 3.4e38: a diverged run in any case). One
  reading pass over the gradients; ``all(isfinite(g))`` costs about twice
  as much on XLA's CPU backend.
  """
  return jnp.isfinite(sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(tree)))


def train_step(state: TrainState, x: jax.Array, key: jax.Array,
               settings: TracedSettings, epochs_done, *, model: VAE,
               optimizer: optax.GradientTransformation,
               objective: Objective = Objective()):
  """One optimizer step on the batch ``x`` ``[B, H, W, C]``.

  Returns:
    The new state, the batch's per-example terms (see
    :func:`vae.train.objectives.loss_fn`) and whether the loss and every gradient
    were finite (with ``config.on_nan="skip"`` the optimizer then skipped
    the update).
  """
  (loss, (terms, batch_stats)), grads = jax.value_and_grad(
      lambda p: loss_fn(p, state.batch_stats, x, key, settings, epochs_done,
                        model=model, objective=objective),
      has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  finite = jnp.isfinite(loss) & all_finite(grads)
  return (TrainState(optax.apply_updates(state.params, updates), opt_state,
                     batch_stats), terms, finite)


def train_epoch(state: TrainState, images: jax.Array, epoch, train_key: jax.Array,
                settings: TracedSettings, *, model: VAE,
                optimizer: optax.GradientTransformation, batch_size: int,
                binarize: str = "none", objective: Objective = Objective()
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One epoch of one run as a single ``lax.scan`` over minibatches.

  Args:
    state: the training state.
    images: ``[N, H, W, C]`` float32 in [0, 1], resident on the device.
    epoch: the epoch number, from 1 (may be traced).
    train_key: the run's training key stream.
    settings: the run's traced settings (scalars).
    model, optimizer, batch_size, binarize, objective: static.

  Returns:
    The new state and the epoch's per-example terms, for
    :func:`vae.train.objectives.epoch_metrics`: ``log_likelihood`` ``[steps, B]``,
    ``kl_per_dim`` ``[steps, B, latent_dim]``, ``kl_weight`` ``[steps]``,
    ``finite`` ``[steps]`` and, for k-sample objectives, ``bound``
    ``[steps, B]``. Metrics are reduced from these on the host, in
    float64, so that they do not depend on how XLA emits a reduction for a
    given number of sweep members.
  """
  num_steps = images.shape[0] // batch_size
  shuffle_key, steps_key = rng.epoch_keys(train_key, epoch)
  order = jax.random.permutation(shuffle_key, images.shape[0])
  batches = order[: num_steps * batch_size].reshape(num_steps, batch_size)

  def body(state, step_and_indices):
    step, indices = step_and_indices
    binarize_key, sample_key = rng.step_keys(steps_key, step)
    # Rows of [N, H*W*C]: XLA's CPU backend gathers and draws over a flat
    # row faster than over [H, W, C] with its trailing axis of size 1 (the
    # draws are the same: bits are generated in row-major order).
    x = jnp.take(images.reshape(images.shape[0], -1), indices, axis=0)
    if binarize == "dynamic":
      x = jax.random.bernoulli(binarize_key, x).astype(x.dtype)
    x = x.reshape(indices.shape + images.shape[1:])
    epochs_done = (epoch - 1) + step / num_steps
    # Non-finite steps are flagged inside the compiled loop and read once,
    # with the epoch's other outputs: no host sync per step.
    new_state, terms, finite = train_step(
        state, x, sample_key, settings, epochs_done, model=model,
        optimizer=optimizer, objective=objective)
    return new_state, {**terms, "kl_weight": kl_weight(settings, epochs_done),
                       "finite": finite}

  return jax.lax.scan(body, state, (jnp.arange(num_steps), batches))
