"""Evaluating a run directory on its test set or on any images: the
evaluator's k-sample bound (:meth:`vae.evals.evaluator.Evaluator.bound`)
of a checkpoint, written as ``eval.json``, and the table of several runs.

Every figure is in nats per example unless its name says otherwise
(``*_bits_per_dim``):

* the importance-weighted bound of Burda et al. (2015) with k samples;
  NLL = -bound;
* rate = mean KL(q(z | x) || p(z)) (analytic), distortion = mean
  -log p(x | z) over the same k draws the bound uses; ELBO = -(rate +
  distortion);
* active units, KL per dimension, the mutual information I(x; z) and the
  collapse flags of :mod:`vae.model.diagnostics` (its thresholds).

Keys: from ``root = jax.random.key(seed)``, the bound uses
``fold_in(root, IWAE_STREAM)`` and the MI estimate ``fold_in(root,
MI_STREAM)`` (:func:`vae.rng.evaluation_keys`).

Measured on 2 CPU cores: k = 5000 on the 10,000 MNIST test images peaked at
612 MiB resident (the JAX runtime, the images, and the MI estimate's [16, N,
L] row chunks; ``peak_rss_mib`` in ``eval.json``) and took 6.5 minutes.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from vae import numerics
from vae.data import datasets as data, preprocess
from vae.evals.evaluator import BoundSettings, Evaluation, Evaluator
from vae.model.bounds import SAMPLE_BLOCK
from vae.model.diagnostics import MI_CEILING_MARGIN
from vae.rng import IWAE_STREAM, MI_STREAM
from vae.store import provenance, restore, runs

def eval_images(config, data_path: str | Path | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
  """The images a run is evaluated on, preprocessed as the run's test set was.

  Without ``data_path``: the test split of the run's dataset. With it: the
  images of that file (:func:`vae.data.datasets.load_images_file`: IDX
  ``.gz`` or raw, ``.npy``, ``.npz``). Either way binarised by
  :func:`vae.data.preprocess.prepare_test_images` itself, exactly as training
  binarised its test set (``static`` and ``dynamic``: one Bernoulli draw
  with the data key; ``none``: kept grey).

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


def evaluate_run(workdir: str | Path,
                 settings: BoundSettings = BoundSettings(), *,
                 data_path: str | Path | None = None,
                 checkpoint: str | int = "best", seed: int = 0,
                 write: bool = True, progress: bool = False) -> Evaluation:
  """Evaluate one run directory; write the result into it as JSON.

  Loads the asked-for checkpoint (default: the best by test ELBO) and the
  images (:func:`eval_images`), runs the evaluator's k-sample bound
  (:meth:`vae.evals.evaluator.Evaluator.bound`) with
  ``jax.random.key(seed)`` and writes its metrics to
  ``<workdir>/<eval_file_name(data_path)>`` atomically. A sweep runner calls
  this once per member.

  Args:
    workdir: a run directory (holds ``config.json`` and checkpoints).
    settings: k, batch and chunk sizes, the MI minibatch and the collapse
      criteria (:class:`vae.evals.evaluator.BoundSettings`).
    data_path: external images instead of the run's test set.
    checkpoint: ``'best'``, ``'latest'`` or an epoch.
    seed: the evaluation seed (the same for every run by default, so runs are
      compared on the same draws where their shapes agree).
    write: write the JSON file.
    progress: show a progress bar.

  Returns:
    An :class:`vae.evals.evaluator.Evaluation`: the per-example arrays of
    the bound, and as ``metrics`` the dict written: the bound's metrics plus
    ``run``, ``checkpoint``, ``epoch``, ``dataset``, ``data_path``,
    ``split``, ``binarize``, ``likelihood``, ``seed``, ``keys``, ``notes``,
    ``file``, ``load_s``, ``total_s``, ``peak_rss_mib`` and ``provenance``.

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
  evaluation = Evaluator(run.model, images).bound(
      run.params, jax.random.key(seed), settings, progress=label)
  result = evaluation.metrics
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
               "binarisation (if any): vae.data.preprocess.prepare_test_images"
               ", as in training"),
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
  return evaluation


_COLUMNS = (  # (header, result field, format)
    ("NLL", "nll_nats", "{:.2f}"),
    ("bits/dim", "nll_bits_per_dim", "{:.4f}"),
    ("ELBO", "elbo", "{:.2f}"),
    ("rate", "rate", "{:.2f}"),
    ("distortion", "distortion", "{:.2f}"),
    ("MI", "mutual_information", "{:.2f}"),
)


def evaluation_table(results: Sequence[tuple[str, dict[str, Any] | str]]
                     ) -> str:
  """A plain-text table, one row per (name, result or error message).

  Columns: checkpoint epoch, N, k, NLL (nats, -IWAE bound), bits/dim, ELBO,
  rate, distortion, active units, MI, collapse flag; then one line per run
  with its diagnosis (or its error) and notes (a note every run shares is
  printed once).
  """
  width = max([3] + [len(name) for name, _ in results])
  head = (f"{'run':<{width}} {'epoch':>5} {'N':>6} {'k':>5}" +
          "".join(f" {c:>10}" for c, _, _ in _COLUMNS[:5]) +
          f" {'AU':>6} {_COLUMNS[5][0]:>6} {'collapse':>8}")
  lines = [head]
  for name, r in results:
    if isinstance(r, str):
      lines.append(f"{name:<{width}} error")
      continue
    lines.append(
        f"{name:<{width}} {r['epoch']:>5} {r['num_examples']:>6} {r['k']:>5}" +
        "".join(f" {fmt.format(r[key]):>10}" for _, key, fmt in _COLUMNS[:5]) +
        f" {str(r['active_units']) + '/' + str(r['num_latents']):>6}"
        f" {r['mutual_information']:>6.2f}"
        f" {'YES' if r['collapse']['collapsed'] else 'no':>8}")
  lines.append("nats per example; NLL = -IWAE bound (k importance samples); "
               "ELBO = -(rate + distortion); AU = active units; MI in nats.")
  done = [r for _, r in results if not isinstance(r, str)]
  shared = [note for note in (done[0].get("notes", []) if done else [])
            if len(done) > 1 and all(note in r.get("notes", []) for r in done)]
  for name, r in results:
    if isinstance(r, str):
      lines.append(f"{name}: error: {r}")
    else:
      lines.append(f"{name}: {r['collapse']['diagnosis']}")
      lines.extend(f"{name}: note: {note}" for note in r.get("notes", [])
                   if note not in shared)
  lines.extend(f"every run: note: {note}" for note in shared)
  return "\n".join(lines)
