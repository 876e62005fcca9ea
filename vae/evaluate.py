"""Evaluating a trained VAE: every figure of ``params`` on a set of images,
and of a run directory on its test set or on any images (``eval.json``).

Every figure is in nats per example unless its name says otherwise
(``*_bits_per_dim``):

* the importance-weighted bound of Burda et al. (2015) with k samples
  (:func:`vae.bounds.iwae_dataset`); NLL = -bound;
* rate = mean KL(q(z | x) || p(z)) (analytic), distortion = mean
  -log p(x | z) over the same k draws the bound uses; ELBO = -(rate +
  distortion);
* active units, KL per dimension, the mutual information I(x; z) and the
  collapse flags of :mod:`vae.diagnostics` (its thresholds).

Keys: from ``root = jax.random.key(seed)``, the bound uses
``fold_in(root, IWAE_STREAM)`` and the MI estimate ``fold_in(root,
MI_STREAM)`` (:func:`vae.rng.evaluation_keys`).

Measured on 2 CPU cores: k = 5000 on the 10,000 MNIST test images peaked at
612 MiB resident (the JAX runtime, the images, and the MI estimate's [16, N,
L] row chunks; ``peak_rss_mib`` in ``eval.json``) and took 6.5 minutes.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vae.data import datasets as data, preprocess
from vae import numerics, rng
from vae.store import provenance, restore, runs
from vae.model.bounds import (DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_K,
                        SAMPLE_BLOCK, chunk_layout, iwae_dataset)
from vae.model.diagnostics import (ACTIVE_UNIT_THRESHOLD, KL_FLOOR,
                             MI_CEILING_MARGIN, MI_ESTIMATOR, MIN_ACTIVE_UNITS,
                             active_units, collapse_diagnosis,
                             kl_per_example_and_dim, mutual_information)
from vae.model.networks import VAE
from vae.rng import IWAE_STREAM, MI_STREAM

EVAL_FILE = runs.EVAL_FILE
eval_file_name = runs.eval_file_name


def evaluate_params(params, images, key: jax.Array, *, model: VAE,
                    k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH_SIZE,
                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                    mi_batch_size: int | None = None,
                    min_active_units: int = MIN_ACTIVE_UNITS,
                    kl_floor: float = KL_FLOOR,
                    active_unit_threshold: float = ACTIVE_UNIT_THRESHOLD,
                    progress: bool | str = False) -> dict[str, Any]:
  """Every evaluation figure of ``params`` on ``images``, as a JSON-ready dict.

  Args:
    params: parameters.
    images: ``[N, H, W, C]`` in [0, 1], already preprocessed (binarised) as
      the model expects; N >= 2.
    key: root key: the bound uses ``fold_in(key, IWAE_STREAM)``, the MI
      estimate ``fold_in(key, MI_STREAM)``.
    model: the model.
    k, batch_size, chunk_size: see :func:`iwae_dataset`.
    mi_batch_size: see :func:`mutual_information`.
    min_active_units, kl_floor, active_unit_threshold: see
      :func:`collapse_diagnosis`.
    progress: show a progress bar over batches (a string: its label).

  Returns:
    ``num_examples``, ``k``, ``nll_nats`` (mean -bound), ``nll_nats_stderr``
    (standard error over examples), ``nll_bits_per_dim``, ``elbo``,
    ``elbo_bits_per_dim``, ``iwae_gain_nats`` (bound - ELBO), ``rate``,
    ``distortion``, ``kl_per_dim``, ``posterior_mean_variance``,
    ``active_units``, ``num_latents``, ``mutual_information`` (+ estimator and
    its ceiling log M), ``collapse`` (flags and ``diagnosis``) and timings
    ``iwae_s``, ``diagnostics_s``.
  """
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  if n < 2:
    raise ValueError(f"images has {n} example(s); accepted: N >= 2 (active "
                     "units and MI need a spread over examples)")
  num_dims = math.prod(images.shape[1:])
  t0 = time.perf_counter()
  iwae_key, mi_key = rng.evaluation_keys(key)
  terms = iwae_dataset(params, images, iwae_key, k,
                       model=model, batch_size=batch_size,
                       chunk_size=chunk_size, progress=progress)
  t1 = time.perf_counter()
  bound = terms.bound.astype(np.float64)
  kl = kl_per_example_and_dim(terms.posterior)
  kl_dims, kl_total = kl.mean(0), kl.sum(-1)
  elbo_per_example = terms.log_likelihood.astype(np.float64) - kl_total
  active, variances = active_units(terms.posterior.mean, active_unit_threshold)
  mi_size = n if mi_batch_size is None else min(int(mi_batch_size), n)
  mi = mutual_information(terms.posterior, mi_key,
                          batch_size=mi_batch_size)
  t2 = time.perf_counter()
  to_bits = 1.0 / (num_dims * math.log(2.0))
  nll = float(-bound.mean())
  elbo = float(elbo_per_example.mean())
  return {
      "num_examples": int(n),
      "data_dims": int(num_dims),
      "k": int(k),
      "batch_size": int(min(batch_size, n)),
      "chunk_size": chunk_layout(k, chunk_size)[0],
      "nll_nats": nll,
      "nll_nats_stderr": float(bound.std(ddof=1) / math.sqrt(n)),
      "nll_bits_per_dim": nll * to_bits,
      "elbo": elbo,
      "elbo_bits_per_dim": -elbo * to_bits,
      "iwae_gain_nats": float(bound.mean() - elbo),
      "rate": float(kl_total.mean()),
      "distortion": float(-terms.log_likelihood.astype(np.float64).mean()),
      "kl_per_dim": [float(v) for v in kl_dims],
      "posterior_mean_variance": [float(v) for v in variances],
      "active_units": active,
      "num_latents": int(kl_dims.shape[0]),
      "mutual_information": mi,
      "mutual_information_estimator": MI_ESTIMATOR,
      "mutual_information_batch_size": int(mi_size),
      "mutual_information_max": math.log(mi_size),
      "collapse": collapse_diagnosis(
          active, kl_dims, min_active_units=min_active_units,
          kl_floor=kl_floor, active_unit_threshold=active_unit_threshold,
          posterior_mean_variance=variances),
      "iwae_s": t1 - t0,
      "diagnostics_s": t2 - t1,
  }


def eval_images(config, data_path: str | Path | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
  """The images a run is evaluated on, preprocessed as the run's test set was.

  Without ``data_path``: the test split of the run's dataset. With it: the
  images of that file (:func:`vae.data.load_images_file`: IDX ``.gz`` or raw,
  ``.npy``, ``.npz``). Either way binarised by :func:`vae.preprocess.prepare_test_images`
  itself, exactly as training binarised its test set (``static`` and
  ``dynamic``: one Bernoulli draw with the data key; ``none``: kept grey).

  Returns:
    ``(images [N, H, W, C] float32, description)``; the description holds
    ``dataset``, ``data_path``, ``split`` and ``binarize``.

  Raises:
    data.DataError: the file or dataset cannot be read, or its image shape is
      not the run's ``data_shape``.
  """
  if data_path is None:
    images = preprocess.load_dataset(config).test_images
    source = f"the test split of {config.dataset!r}"
    described = {"dataset": config.dataset, "data_path": None, "split": "test"}
  else:
    images, _ = data.load_images_file(data_path)
    source = f"'{data_path}'"
    described = {"dataset": None, "data_path": str(Path(data_path).resolve()),
                 "split": None}
  shape = tuple(int(d) for d in config.data_shape)
  if tuple(images.shape[1:]) != shape:
    raise data.DataError(
        f"{source}: images of shape {list(images.shape[1:])} do not fit the "
        f"run, which was trained on data_shape {list(shape)}; accepted: "
        f"images of that shape.")
  if images.shape[0] < 2:
    raise data.DataError(f"{source}: {images.shape[0]} image; accepted: at "
                         "least 2 (active units and MI need a spread)")
  test = preprocess.prepare_test_images(config, images)
  described["binarize"] = config.binarize
  return np.asarray(test), described


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, in MiB."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _notes(config) -> list[str]:
  notes = []
  if config.objective != "vae":
    notes.append(
        f"objective={config.objective!r}: the encoder's variance head was not "
        "trained as a posterior, so the NLL, ELBO, rate, MI and collapse "
        "flags do not describe a VAE and are not comparable to VAE runs.")
  if config.likelihood == "bernoulli" and config.binarize == "none":
    notes.append(
        "Bernoulli likelihood on grey-level pixels: log p(x) is a "
        "cross-entropy, not a normalised density of [0, 1]-valued images. "
        "Compare NLLs only between runs on the same data; they are not "
        "comparable to binarised-MNIST results in the literature.")
  if config.likelihood in ("gaussian", "continuous_bernoulli"):
    notes.append(
        f"{config.likelihood} likelihood: a density of continuous pixels in "
        "[0, 1] (no dequantisation), so the NLL can be negative and bits/dim "
        "are not those of 8-bit data.")
  return notes


def _mi_notes(result: dict[str, Any]) -> list[str]:
  ceiling = result["mutual_information_max"]
  if result["mutual_information"] < ceiling - MI_CEILING_MARGIN:
    return []
  estimate = result["mutual_information"]
  m = result["mutual_information_batch_size"]
  if estimate > ceiling:
    where = (f"is above its ceiling log M = {ceiling:.3f} (M = {m} examples),"
             " which the estimator exceeds only by the Monte Carlo error of "
             "its one draw per example (its entropy term is analytic): it is "
             "saturated")
  else:
    where = (f"is near its ceiling log M = {ceiling:.3f} (M = {m} "
             "examples): it is saturated")
  return [f"The MI estimate {estimate:.3f} nats {where}, the posteriors "
          "barely overlap. The estimator is a lower bound in expectation "
          "capped at log M, so read it as I(x; z) >= about log M, with no "
          "information on how much more; a larger M raises the cap."]


def evaluate_run(workdir: str | Path, *, k: int = DEFAULT_K,
                 data_path: str | Path | None = None,
                 checkpoint: str | int = "best", seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 mi_batch_size: int | None = None,
                 min_active_units: int = MIN_ACTIVE_UNITS,
                 kl_floor: float = KL_FLOOR, write: bool = True,
                 progress: bool = False) -> dict[str, Any]:
  """Evaluate one run directory; write the result into it as JSON.

  Loads the asked-for checkpoint (default: the best by test ELBO), the
  images (:func:`eval_images`), computes :func:`evaluate_params` with
  ``jax.random.key(seed)`` and writes ``<workdir>/<eval_file_name(data_path)>``
  atomically. A sweep runner calls this once per member.

  Args:
    workdir: a run directory (holds ``config.json`` and checkpoints).
    k: importance samples per example.
    data_path: external images instead of the run's test set.
    checkpoint: ``'best'``, ``'latest'`` or an epoch.
    seed: the evaluation seed (the same for every run by default, so runs are
      compared on the same draws where their shapes agree).
    batch_size, chunk_size, mi_batch_size, min_active_units, kl_floor: see
      :func:`evaluate_params`.
    write: write the JSON file.
    progress: show a progress bar.

  Returns:
    The dict written: :func:`evaluate_params`'s fields plus ``run``,
    ``checkpoint``, ``epoch``, ``dataset``, ``data_path``, ``split``,
    ``binarize``, ``likelihood``, ``seed``, ``keys``, ``notes``, ``file``,
    ``load_s``, ``total_s``, ``peak_rss_mib`` and ``provenance``.

  Raises:
    runs.RunError: not a run directory, no checkpoint, or not writable.
    checkpoint.CheckpointError: the checkpoint is missing or corrupt.
    data.DataError: the images cannot be used.
  """
  t0 = time.perf_counter()
  workdir = Path(workdir)
  which = runs.parse_checkpoint(checkpoint)
  numerics.check(runs.load_config(workdir).numerics)
  run = restore.load_run(workdir, which)
  images, described = eval_images(run.config, data_path)
  t1 = time.perf_counter()
  label = workdir.name if progress else False
  result = evaluate_params(run.params, images, jax.random.key(seed),
                           model=run.model, k=k, batch_size=batch_size,
                           chunk_size=chunk_size, mi_batch_size=mi_batch_size,
                           min_active_units=min_active_units, kl_floor=kl_floor,
                           progress=label)
  name = runs.eval_file_name(data_path)
  result.update({
      "run": str(workdir.resolve()),
      "checkpoint": which,
      "epoch": run.epoch,
      **described,
      "likelihood": run.config.likelihood,
      "seed": int(seed),
      "keys": (f"root = jax.random.key({seed}); bound: fold_in(root, "
               f"{IWAE_STREAM}), example i, draw j: normal(fold_in(fold_in("
               f"bound_key, i), j // {SAMPLE_BLOCK}), ({SAMPLE_BLOCK}, L))"
               f"[j % {SAMPLE_BLOCK}]; MI draws: fold_in(root, {MI_STREAM}); "
               "binarisation (if any): vae.preprocess.prepare_test_images, as in "
               "training"),
      "notes": _notes(run.config) + _mi_notes(result),
      "file": name,
      "load_s": t1 - t0,
      "total_s": time.perf_counter() - t0,
      "peak_rss_mib": peak_rss_mib(),
      "provenance": provenance.provenance(),
  })
  if write:
    try:
      runs.write_json_atomic(workdir / name, result)
    except OSError as e:
      raise runs.RunError(f"cannot write {workdir / name}: {e}") from None
  return result
