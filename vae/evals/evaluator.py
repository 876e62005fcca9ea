"""The one evaluation path: parameters and a dataset in, per-example bounds
and summary metrics out, in nats per example.

Training's per-epoch test metrics, ``scripts/evaluate.py`` (``eval.json``)
and the figures all compute their numbers here, with three estimators:

* the one-sample ELBO of every example (:func:`elbo_terms`: one posterior
  draw per example, keyed by :func:`vae.rng.batch_key`, the same every
  epoch), reduced on the host in float64 (:func:`elbo_metrics`): the
  ``test_*`` fields of ``metrics.jsonl``. Training runs it for all its
  members at once (:func:`member_elbo_terms`, the members one after another,
  so each has its standalone run's bits);
* the k-sample importance-weighted bound of every example (Burda et al.
  2015; :func:`iwae_dataset`, batch by batch over
  :func:`vae.model.bounds.iwae_terms`) with the diagnostics of its posterior
  (:func:`bound_metrics`): ``eval.json``;
* the posterior of every example (:func:`posterior`) and its diagnostics
  (:func:`posterior_diagnostics`: KL per dimension, active units, with the
  thresholds of :mod:`vae.model.diagnostics`): the figures; the bound's
  metrics use the same function on the bound's posterior.

:class:`Evaluator` holds a model and a dataset and runs each estimator on
parameters, returning an :class:`Evaluation`: the per-example arrays
(``[N, ...]``, to store beside the summary or compare example by example)
and the summary metrics.

The ELBO and the figures encode the data in batches of the run's
``eval_batch_size`` (1000 by default) and give the same posterior, bit for
bit; the bound encodes in its own batches of ``batch_size`` (20 by
default), whose products round differently in the last float32 bits, so
its rate and KL per dimension agree with the others to float32 rounding
(about 1e-7 relative), not bitwise.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae import inputs, rng
from vae.model import bounds, core, diagnostics
from vae.model.networks import VAE

DEFAULT_K = 5000  # Burda et al. (2015)
DEFAULT_BATCH_SIZE = 20  # examples per compiled call of the bound
DEFAULT_CHUNK_SIZE = bounds.DEFAULT_CHUNK_SIZE
POSTERIOR_BATCH_SIZE = 1000  # examples per encoder call (config.eval_batch_size's default)


class Evaluation(NamedTuple):
  """What an estimator gives on one dataset.

  Attributes:
    per_example: arrays whose first axis is the example (``[N]`` or
      ``[N, L]``), by name; each estimator's docstring lists them.
    metrics: the summary (JSON-ready numbers and flags), by name.
  """

  per_example: dict[str, np.ndarray]
  metrics: dict[str, Any]


# ----------------------------------------------------------------------------
# The one-sample ELBO (training's test metrics).
# ----------------------------------------------------------------------------


def elbo_terms(params, images: jax.Array, key: jax.Array, *,
                       model: VAE, batch_size: int, objective: str = "vae"
                       ) -> tuple[jax.Array, jax.Array]:
  """Per-example log p(x | z) ``[N]`` and KL per dimension ``[N, latent]``.

  Batches of ``batch_size`` (the last one padded and dropped), one sample per
  example from ``rng.batch_key(key, batch_index)``. For the autoencoder, z is
  the encoder's mean and the KL is zero.
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
      terms = core.elbo_terms(params, x, rng.batch_key(key, i), model=model)
    return terms.log_likelihood, terms.kl_per_dim

  log_lik, kl_per_dim = jax.lax.map(per_batch, (jnp.arange(num_batches), padded))
  return (log_lik.reshape(-1)[:n],
          kl_per_dim.reshape((-1, kl_per_dim.shape[-1]))[:n])


@functools.lru_cache(maxsize=32)
def member_elbo_terms(model: VAE, batch_size: int, objective: str = "vae"):
  """:func:`elbo_terms` compiled for a leading member axis: ``(params [M],
  images, keys [M]) -> (log_likelihood [M, N], kl_per_dim [M, N, L])``.

  Members are evaluated one after another (``sequential_vmap``: a loop
  under vmap): vmapped, the test batch every member shares would become one
  product with all members' weights at once, and each member's test ELBO
  would differ from its standalone run's in the last bits. A lone run is
  the same program with a member axis of one.
  """
  fn = jax.custom_batching.sequential_vmap(functools.partial(
      elbo_terms, model=model, batch_size=batch_size, objective=objective))
  return jax.jit(jax.vmap(fn, in_axes=(0, None, 0)))


def elbo_metrics(log_likelihood: np.ndarray, kl_per_dim: np.ndarray,
                 beta: float, num_data_dims: int) -> dict[str, float]:
  """Metrics over a whole dataset from per-example terms (``[N]`` and
  ``[N, L]``), in float64 on the host, nats per example: ``loss``,
  ``recon``, ``kl``, ``elbo``, ``bits_per_dim``
  (:func:`vae.model.core.metrics_from_terms`)."""
  metrics = core.metrics_from_terms(
      np.asarray(log_likelihood, np.float64),
      np.asarray(kl_per_dim, np.float64), np.float64(beta), num_data_dims,
      xp=np)
  return {k: float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------
# The posterior (the figures) and its diagnostics.
# ----------------------------------------------------------------------------


def posterior(params, images, *, model: VAE,
              batch_size: int = POSTERIOR_BATCH_SIZE) -> core.Posterior:
  """q(z | x) of every image, in batches: NumPy fields ``[N, latent_dim]``."""
  images = jnp.asarray(images, jnp.float32)
  fn = _jitted_encode(model)
  means, logvars = [], []
  for start in range(0, images.shape[0], batch_size):
    post = fn(params, images[start:start + batch_size])
    means.append(np.asarray(post.mean))
    logvars.append(np.asarray(post.logvar))
  return core.Posterior(np.concatenate(means), np.concatenate(logvars))


@functools.lru_cache(maxsize=16)
def _jitted_encode(model: VAE):
  return jax.jit(functools.partial(core.encode, model=model))


def posterior_diagnostics(post: core.Posterior,
                          active_unit_threshold: float =
                          diagnostics.ACTIVE_UNIT_THRESHOLD
                          ) -> dict[str, Any]:
  """The KL and activity of a dataset's posterior (``[N, L]`` fields).

  Returns:
    ``kl`` ``[N, L]`` (analytic KL per example and dimension, float64),
    ``kl_per_dim`` ``[L]`` (its mean over examples: their sum is the rate),
    ``posterior_mean_variance`` ``[L]`` and ``active_units`` (their count
    above ``active_unit_threshold``; :func:`vae.model.diagnostics.active_units`).
  """
  kl = diagnostics.kl_per_example_and_dim(post)
  active, variances = diagnostics.active_units(post.mean,
                                               active_unit_threshold)
  return {"kl": kl, "kl_per_dim": kl.mean(0),
          "posterior_mean_variance": variances, "active_units": active}


# ----------------------------------------------------------------------------
# The k-sample bound (eval.json).
# ----------------------------------------------------------------------------


class BoundSettings(NamedTuple):
  """How the k-sample bound and its diagnostics are computed.

  Attributes:
    k: importance samples per example.
    batch_size: examples per compiled call (the last batch is padded).
    chunk_size: draws per scan step (see
      :func:`vae.model.bounds.chunk_layout`).
    mi_batch_size: minibatch of the mutual-information estimate (None: the
      whole set; :func:`vae.model.diagnostics.mutual_information`).
    min_active_units, kl_floor, active_unit_threshold: the collapse
      criteria (:func:`vae.model.diagnostics.collapse_diagnosis`).
  """

  k: int = DEFAULT_K
  batch_size: int = DEFAULT_BATCH_SIZE
  chunk_size: int = DEFAULT_CHUNK_SIZE
  mi_batch_size: int | None = None
  min_active_units: int = diagnostics.MIN_ACTIVE_UNITS
  kl_floor: float = diagnostics.KL_FLOOR
  active_unit_threshold: float = diagnostics.ACTIVE_UNIT_THRESHOLD


@functools.partial(jax.jit, static_argnames=("k", "model", "chunk_size"))
def _iwae_batch(params, x, key, first_index, *, k, model, chunk_size):
  return bounds.iwae_terms(params, x, key, k, model=model,
                           chunk_size=chunk_size, first_index=first_index)


def iwae_dataset(params, images, key: jax.Array, k: int, *, model: VAE,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 progress: bool | str = False) -> bounds.IwaeTerms:
  """:func:`vae.model.bounds.iwae_terms` over a whole set, batch by batch
  (one compilation).

  Args:
    params: parameters.
    images: ``[N, H, W, C]`` in [0, 1] (NumPy or JAX).
    key: the bound's key; example i uses ``fold_in(key, i)``.
    k, model, chunk_size: as in :func:`vae.model.bounds.iwae_terms`.
    batch_size: examples per compiled call (the last batch is padded and the
      padding dropped).
    progress: show a progress bar (a string: its label).

  Returns:
    :class:`vae.model.bounds.IwaeTerms` of NumPy arrays: ``[N]`` bounds and
    mean log-likelihoods, ``[N, L]`` posterior fields.

  Raises:
    ValueError: k, chunk_size or batch_size not accepted, or no images.
    ConfigError: a batch's decoder rows (batch x draws per step x pixels,
      ``bounds.EVAL_BYTES_PER_DECODER_VALUE`` bytes each) cannot fit in the
      memory available (:func:`vae.inputs.check_memory`); before compiling.
  """
  k = bounds.check_k(k)
  bounds.chunk_layout(k, chunk_size)
  if isinstance(batch_size, bool) or not isinstance(
      batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} is not accepted: an integer "
                     ">= 1")
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  if n == 0:
    raise ValueError("images is empty (N = 0); accepted: N >= 1")
  batch_size = min(int(batch_size), n)
  chunk, _ = bounds.chunk_layout(k, chunk_size)
  values = math.prod(images.shape[1:])
  inputs.check_memory(  # refused before compiling: XLA would abort
      batch_size * chunk * values * bounds.EVAL_BYTES_PER_DECODER_VALUE,
      f"the k-sample bound with batch_size={batch_size} and {chunk} draws "
      f"per step (chunk_size={chunk_size}; batch_size x draws x {values} "
      f"values x 4 bytes x {bounds.EVAL_BYTES_PER_DECODER_VALUE // 4})",
      "lower batch_size or chunk_size")
  starts = range(0, n, batch_size)
  if progress:
    from tqdm.auto import tqdm
    starts = tqdm(starts, desc=progress if isinstance(progress, str) else
                  "iwae", unit="batch", leave=False)
  parts = []
  for start in starts:
    x = images[start:start + batch_size]
    if x.shape[0] < batch_size:
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - x.shape[0], 0)])
    parts.append(jax.device_get(_iwae_batch(
        params, x, key, jnp.int32(start), k=k, model=model,
        chunk_size=int(chunk_size))))

  def cat(field):
    return np.concatenate([field(p) for p in parts])[:n]

  return bounds.IwaeTerms(cat(lambda p: p.bound),
                          cat(lambda p: p.log_likelihood),
                          core.Posterior(cat(lambda p: p.posterior.mean),
                                         cat(lambda p: p.posterior.logvar)))


def bound_metrics(params, images, key: jax.Array, *, model: VAE,
                  settings: BoundSettings = BoundSettings(),
                  progress: bool | str = False) -> Evaluation:
  """The k-sample bound of every image and the diagnostics of its posterior.

  Args:
    params: parameters.
    images: ``[N, H, W, C]`` in [0, 1], already preprocessed (binarised) as
      the model expects; N >= 2.
    key: root key: the bound uses ``fold_in(key, IWAE_STREAM)``, the MI
      estimate ``fold_in(key, MI_STREAM)`` (:func:`vae.rng.evaluation_keys`).
    model: the model.
    settings: see :class:`BoundSettings`.
    progress: show a progress bar over batches (a string: its label).

  Returns:
    An :class:`Evaluation`. ``per_example``: ``bound`` ``[N]`` (nats; NLL =
    -bound), ``log_likelihood`` ``[N]`` (the mean over the k draws of log
    p(x | z): -distortion), ``kl`` ``[N]`` (analytic), ``elbo`` ``[N]`` (=
    log_likelihood - kl), ``posterior_mean`` and ``posterior_logvar``
    ``[N, L]``. ``metrics`` (what ``eval.json`` holds): ``num_examples``,
    ``k``, ``nll_nats`` (mean -bound), ``nll_nats_stderr`` (standard error
    over examples), ``nll_bits_per_dim``, ``elbo``, ``elbo_bits_per_dim``,
    ``iwae_gain_nats`` (bound - ELBO), ``rate``, ``distortion``,
    ``kl_per_dim``, ``posterior_mean_variance``, ``active_units``,
    ``num_latents``, ``mutual_information`` (+ estimator and its ceiling
    log M), ``collapse`` (flags and ``diagnosis``) and timings ``iwae_s``,
    ``diagnostics_s``.
  """
  s = settings
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  if n < 2:
    raise ValueError(f"images has {n} example(s); accepted: N >= 2 (active "
                     "units and MI need a spread over examples)")
  num_dims = math.prod(images.shape[1:])
  t0 = time.perf_counter()
  iwae_key, mi_key = rng.evaluation_keys(key)
  terms = iwae_dataset(params, images, iwae_key, s.k, model=model,
                       batch_size=s.batch_size, chunk_size=s.chunk_size,
                       progress=progress)
  t1 = time.perf_counter()
  bound = terms.bound.astype(np.float64)
  post = posterior_diagnostics(terms.posterior, s.active_unit_threshold)
  kl_dims, kl_total = post["kl_per_dim"], post["kl"].sum(-1)
  log_lik = terms.log_likelihood.astype(np.float64)
  elbo_per_example = log_lik - kl_total
  active, variances = post["active_units"], post["posterior_mean_variance"]
  mi_size = n if s.mi_batch_size is None else min(int(s.mi_batch_size), n)
  mi = diagnostics.mutual_information(terms.posterior, mi_key,
                                      batch_size=s.mi_batch_size)
  t2 = time.perf_counter()
  to_bits = 1.0 / (num_dims * math.log(2.0))
  nll = float(-bound.mean())
  elbo = float(elbo_per_example.mean())
  metrics = {
      "num_examples": int(n),
      "data_dims": int(num_dims),
      "k": int(s.k),
      "batch_size": int(min(s.batch_size, n)),
      "chunk_size": bounds.chunk_layout(s.k, s.chunk_size)[0],
      "nll_nats": nll,
      "nll_nats_stderr": float(bound.std(ddof=1) / math.sqrt(n)),
      "nll_bits_per_dim": nll * to_bits,
      "elbo": elbo,
      "elbo_bits_per_dim": -elbo * to_bits,
      "iwae_gain_nats": float(bound.mean() - elbo),
      "rate": float(kl_total.mean()),
      "distortion": float(-log_lik.mean()),
      "kl_per_dim": [float(v) for v in kl_dims],
      "posterior_mean_variance": [float(v) for v in variances],
      "active_units": active,
      "num_latents": int(kl_dims.shape[0]),
      "mutual_information": mi,
      "mutual_information_estimator": diagnostics.MI_ESTIMATOR,
      "mutual_information_batch_size": int(mi_size),
      "mutual_information_max": math.log(mi_size),
      "collapse": diagnostics.collapse_diagnosis(
          active, kl_dims, min_active_units=s.min_active_units,
          kl_floor=s.kl_floor, active_unit_threshold=s.active_unit_threshold,
          posterior_mean_variance=variances),
      "iwae_s": t1 - t0,
      "diagnostics_s": t2 - t1,
  }
  per_example = {"bound": terms.bound, "log_likelihood": terms.log_likelihood,
                 "kl": kl_total, "elbo": elbo_per_example,
                 "posterior_mean": terms.posterior.mean,
                 "posterior_logvar": terms.posterior.logvar}
  return Evaluation(per_example, metrics)


# ----------------------------------------------------------------------------
# The evaluator.
# ----------------------------------------------------------------------------


class Evaluator:
  """A model and a dataset, evaluated on any parameters: the one evaluation
  path of training, ``scripts/evaluate.py`` and the figures.

  Args:
    model: the model (static).
    images: ``[N, H, W, C]`` in [0, 1], preprocessed as the run's test set
      (:func:`vae.data.preprocess.prepare_test_images`).
    batch_size: examples per encoder call of the ELBO and the posterior
      (the run's ``config.eval_batch_size``).
    objective: the run's ``config.objective`` ("autoencoder": the ELBO's
      z is the posterior mean and its KL zero).
  """

  def __init__(self, model: VAE, images, *,
               batch_size: int = POSTERIOR_BATCH_SIZE,
               objective: str = "vae"):
    self.model, self.images = model, images
    self.batch_size, self.objective = int(batch_size), objective
    self.num_data_dims = math.prod(np.shape(images)[1:])

  def elbo(self, params, key: jax.Array, *, beta: float = 1.0
           ) -> Evaluation:
    """The one-sample ELBO of every example, as training logs it each epoch
    (the same compiled program, with a member axis of one, and the same
    draws for the run's evaluation key ``vae.rng.member_keys(seed).eval``).

    Returns:
      ``per_example``: ``log_likelihood`` ``[N]``, ``kl_per_dim`` ``[N, L]``
      and ``elbo`` ``[N]`` (float64); ``metrics``: :func:`elbo_metrics`
      (``loss`` with KL weight ``beta``).
    """
    fn = member_elbo_terms(self.model, self.batch_size, self.objective)
    stacked = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], params)
    log_lik, kl = jax.device_get(fn(stacked, jnp.asarray(self.images),
                                    jnp.asarray(key)[None]))
    log_lik, kl = log_lik[0], kl[0]
    per_example = {"log_likelihood": log_lik, "kl_per_dim": kl,
                   "elbo": log_lik.astype(np.float64)
                   - kl.astype(np.float64).sum(-1)}
    return Evaluation(per_example, elbo_metrics(log_lik, kl, beta,
                                                self.num_data_dims))

  def posterior(self, params) -> core.Posterior:
    """q(z | x) of every example (:func:`posterior`)."""
    return posterior(params, self.images, model=self.model,
                     batch_size=self.batch_size)

  def diagnostics(self, params, active_unit_threshold: float =
                  diagnostics.ACTIVE_UNIT_THRESHOLD) -> Evaluation:
    """The posterior of every example and its diagnostics (the figures').

    Returns:
      ``per_example``: ``posterior_mean``, ``posterior_logvar`` and ``kl``
      ``[N, L]``; ``metrics``: ``kl_per_dim``, ``posterior_mean_variance``
      (``[L]`` arrays) and ``active_units``.
    """
    post = self.posterior(params)
    d = posterior_diagnostics(post, active_unit_threshold)
    return Evaluation({"posterior_mean": post.mean,
                       "posterior_logvar": post.logvar, "kl": d.pop("kl")}, d)

  def bound(self, params, key: jax.Array,
            settings: BoundSettings = BoundSettings(), *,
            progress: bool | str = False) -> Evaluation:
    """The k-sample bound and its diagnostics (:func:`bound_metrics`)."""
    return bound_metrics(params, self.images, key, model=self.model,
                         settings=settings, progress=progress)
