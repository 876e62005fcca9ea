"""Images as training saw them: the one dataset cache and binarisation.

:func:`load_dataset` is the library's only dataset cache: training, figures,
evaluation and benchmarks read datasets through it, so a dataset is parsed
once per process. :func:`prepare_images` and :func:`prepare_test_images` turn
a dataset into the arrays a run trains and is evaluated on; every later tool
(evaluation, figures, TensorBoard) calls :func:`prepare_test_images` too, so
it sees the test set exactly as training did.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae.data import datasets as data
from vae import rng


@functools.lru_cache(maxsize=2)
def _cached(name: str, data_dir: str | None, manual_dir: str | None
            ) -> data.Dataset:
  dataset = data.load_dataset(name, data_dir=data_dir, manual_dir=manual_dir)
  for split in ("train", "test"):
    getattr(dataset, f"{split}_images").setflags(write=False)
    getattr(dataset, f"{split}_labels").setflags(write=False)
  return dataset


def load_dataset(config) -> data.Dataset:
  """The dataset a config names (fields ``dataset``, ``data_dir``,
  ``manual_dir``; "" means unset), kept for the process (read-only arrays).

  Raises:
    data.DataError: see :func:`vae.data.datasets.load_dataset`.
  """
  return _cached(config.dataset, config.data_dir or None,
                 config.manual_dir or None)


def clear_cache() -> None:
  """Forget every cached dataset (e.g. after mocking TFDS in a test)."""
  _cached.cache_clear()


def prepare_images(config, dataset: data.Dataset) -> tuple[jax.Array, jax.Array]:
  """Device-resident (train, test) images, binarised as the config says.

  ``static``: both sets binarised once with :func:`vae.rng.data_key`.
  ``dynamic``: train images stay grey (re-drawn every step by the scanned
  epoch), the test set is binarised once (:func:`prepare_test_images`) so
  test figures are comparable across epochs and runs.
  """
  train = jnp.asarray(dataset.train_images, jnp.float32)
  if config.binarize == "static":
    train_key, _ = jax.random.split(rng.data_key())
    train = jax.random.bernoulli(train_key, train).astype(jnp.float32)
  return train, prepare_test_images(config, dataset.test_images)


def prepare_test_images(config, images) -> jax.Array:
  """Held-out images ``[N, H, W, C]`` as a run was evaluated on them:
  binarised once (``static`` or ``dynamic``) with the test half of
  :func:`vae.rng.data_key`, whatever the training set."""
  test = jnp.asarray(images, jnp.float32)
  if config.binarize in ("static", "dynamic"):
    _, test_key = jax.random.split(rng.data_key())
    test = jax.random.bernoulli(test_key, test).astype(jnp.float32)
  return test


class HeldOut(NamedTuple):
  """A run's test split, preprocessed as in training.

  Attributes:
    images: float32 ``[N, H, W, C]`` (binarised for ``binarize`` static or
      dynamic exactly as training did, by :func:`prepare_test_images`).
    labels: int32 ``[N]``.
  """

  images: np.ndarray
  labels: np.ndarray


def load_test_set(config) -> HeldOut:
  """The test split a run was evaluated on: :func:`load_dataset` then
  :func:`prepare_test_images` (binarised as in training)."""
  dataset = load_dataset(config)
  test = prepare_test_images(config, dataset.test_images)
  return HeldOut(np.asarray(test), np.asarray(dataset.test_labels))
