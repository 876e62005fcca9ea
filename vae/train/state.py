"""The training state of a run: :class:`TrainState`, its initialisation, and
stacking along the member axis of a sweep.

``TrainState``'s field names are the leaf paths of every checkpoint
(``state/params/...``, ``state/opt_state/...``, ``state/batch_stats/...``), so
they never change.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from vae.model import core
from vae import rng
from vae.model.networks import VAE, init_params


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
    """What :mod:`vae.model.core` takes as ``params`` (evaluation mode)."""
    return core.evaluation_params(self.params, self.batch_stats)


def init_state(seed, *, model: VAE, optimizer: optax.GradientTransformation,
               data_shape: Sequence[int]) -> TrainState:
  """The state of a fresh run: parameters from the seed's init stream
  (:func:`vae.rng.member_keys`), the optimizer's initial state, and the
  initial batch statistics (``{}`` without batch norm). ``seed`` may be
  traced (vmapped over a sweep's seeds)."""
  collections = core.variables(
      init_params(model, rng.member_keys(seed).init, data_shape))
  params = collections["params"]
  return TrainState(params, optimizer.init(params),
                    collections.get("batch_stats", {}))


def stack(trees: list[Any]) -> Any:
  """Stack pytrees along a new leading member axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Member ``index`` of a stacked pytree."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)
