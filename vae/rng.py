"""Every named PRNG key stream of the library, derived in one place.

Randomness is a pure function of (seed, epoch, step). All keys come from
typed roots ``jax.random.key(seed)`` by ``jax.random.fold_in`` with the
stream numbers below, so a run resumed at epoch k draws exactly what an
uninterrupted run draws, and a sweep member draws what its standalone run
draws::

  a run,  root = key(config.seed)
    init   fold_in(root, INIT_STREAM=0)    parameter initialisation
    train  fold_in(root, TRAIN_STREAM=1)   epoch_key = fold_in(train, epoch)
             shuffle  = fold_in(epoch_key, SHUFFLE_STREAM=0)
             steps    = fold_in(epoch_key, STEPS_STREAM=1)
             step_key = fold_in(steps, step) -> split -> (binarize, sample)
               k-sample objectives: draw 0 uses sample itself, draw j >= 1
               fold_in(sample, j) (draw_keys; k = 1 is the one-sample draw)
    eval   fold_in(root, EVAL_STREAM=2)    test ELBO: batch b samples with
                                           fold_in(eval, b), the same every
                                           epoch; TensorBoard's per-epoch
                                           reconstruction fold_in(eval, epoch)
  static binarisation, root = key(0) (not the run's seed: every run sees
  the same binarised digits, as with a published binarised dataset)
    data   fold_in(root, DATA_STREAM=3) -> split -> (train set, test set)

  an evaluation, root = key(--seed) (scripts/evaluate.py)
    iwae   fold_in(root, IWAE_STREAM=0)    example i: fold_in(iwae, i); draw
                                           block b: fold_in(that, b)
                                           (vae.model.bounds.standard_normals)
    mi     fold_in(root, MI_STREAM=1)      mutual-information draws

  a set of figures, root = key(--seed) (scripts/plot.py)
    pick 0 (test images shown), recon 1 (stochastic reconstructions),
    prior 2 (prior samples), scatter 3 (t-SNE subset and seed)
"""

from __future__ import annotations

from typing import NamedTuple

import jax

# A run.
INIT_STREAM, TRAIN_STREAM, EVAL_STREAM, DATA_STREAM = 0, 1, 2, 3
# An epoch of the train stream.
SHUFFLE_STREAM, STEPS_STREAM = 0, 1
# An evaluation.
IWAE_STREAM, MI_STREAM = 0, 1
# A set of figures.
PICK_STREAM, RECON_STREAM, PRIOR_STREAM, SCATTER_STREAM = 0, 1, 2, 3


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
  published binarised dataset. Split into (train set, test set) keys."""
  return jax.random.fold_in(jax.random.key(0), DATA_STREAM)


def epoch_keys(train_key: jax.Array, epoch) -> tuple[jax.Array, jax.Array]:
  """``(shuffle_key, steps_key)`` of one epoch (``epoch`` may be traced)."""
  epoch_key = jax.random.fold_in(train_key, epoch)
  return (jax.random.fold_in(epoch_key, SHUFFLE_STREAM),
          jax.random.fold_in(epoch_key, STEPS_STREAM))


def step_keys(steps_key: jax.Array, step) -> tuple[jax.Array, jax.Array]:
  """``(binarize_key, sample_key)`` of one step of an epoch."""
  binarize_key, sample_key = jax.random.split(jax.random.fold_in(steps_key,
                                                                 step))
  return binarize_key, sample_key


def draw_keys(sample_key: jax.Array, k: int) -> jax.Array:
  """``[k]`` keys of a k-sample objective's draws: ``sample_key`` itself for
  draw 0 and ``fold_in(sample_key, j)`` for draw j >= 1, so the draws of k
  are the first k of any larger k, and k = 1 is the one-sample draw."""
  rest = [jax.random.fold_in(sample_key, j) for j in range(1, k)]
  return jax.numpy.stack([sample_key, *rest])


def batch_key(eval_key: jax.Array, batch_index) -> jax.Array:
  """The sampling key of test batch ``batch_index`` (the same every epoch)."""
  return jax.random.fold_in(eval_key, batch_index)


def evaluation_keys(root: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(iwae_key, mi_key)`` of an evaluation whose root key is ``root``
  (``jax.random.key(seed)``)."""
  return (jax.random.fold_in(root, IWAE_STREAM),
          jax.random.fold_in(root, MI_STREAM))


class FigureKeys(NamedTuple):
  """The key streams of one set of figures."""

  pick: jax.Array
  recon: jax.Array
  prior: jax.Array
  scatter: jax.Array


def figure_keys(seed: int) -> FigureKeys:
  """Key streams of the figures drawn with ``seed`` (scripts/plot.py)."""
  root = jax.random.key(seed)
  return FigureKeys(*(jax.random.fold_in(root, s) for s in (
      PICK_STREAM, RECON_STREAM, PRIOR_STREAM, SCATTER_STREAM)))


def reconstruction_key(eval_key: jax.Array, epoch) -> jax.Array:
  """The key of TensorBoard's reconstruction image of ``epoch``."""
  return jax.random.fold_in(eval_key, epoch)
