"""Runs read back from their directories: configs, models and parameters,
without an optimizer or a trainer; comparing two runs and references;
resuming a group from its members' checkpoints.

:func:`load_run` builds the model from the saved config and reads only the
parameters (and batch statistics) of a checkpoint, into the shapes of the
model's initial parameters (``jax.eval_shape``: nothing is computed or
compiled); the optimizer state beside them is left on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae import inputs, rng
from vae.errors import CheckpointError, RunError
from vae.model import core
from vae.model.networks import VAE, build_model, init_params
from vae.store import checkpoint, runs


class LoadedRun(NamedTuple):
  """A trained run read back from its workdir (see :func:`load_run`).

  ``params`` is what :mod:`vae.model.core` takes: the ``params``
  collection, or ``{"params", "batch_stats"}`` for a model with batch
  normalisation.
  """

  config: ml_collections.ConfigDict
  model: VAE
  params: Any
  epoch: int


class Weights(NamedTuple):
  """The part of a checkpointed training state that evaluation needs: its
  leaf paths are those of the state's fields of the same names
  (``state/params/...``, ``state/batch_stats/...``), so a checkpoint is
  read into it without the optimizer state saved beside them.

  Attributes:
    params: the ``params`` collection.
    batch_stats: the ``batch_stats`` collection (``{}`` without batch norm).
  """

  params: Any
  batch_stats: Any

  def variables(self):
    """What :mod:`vae.model.core` takes as ``params``."""
    return core.evaluation_params(self.params, self.batch_stats)


def weights_like(config: ml_collections.ConfigDict, model: VAE) -> Any:
  """Shapes and dtypes of the weights in a checkpoint of a run of
  ``config``: ``{"state": Weights, "epoch": int32}`` of ShapeDtypeStructs
  (the model's initial parameters, by ``jax.eval_shape``; no optimizer)."""
  def like():
    collections = core.variables(init_params(
        model, rng.member_keys(0).init, config.data_shape))
    return {"state": Weights(collections["params"],
                             collections.get("batch_stats", {})),
            "epoch": jnp.int32(0)}
  return jax.eval_shape(like)


def load_run(workdir: str | Path, which: str | int = "best") -> LoadedRun:
  """Config, model and parameters of a run directory.

  Args:
    workdir: a directory written by :func:`vae.train.loop.fit`.
    which: ``"best"`` (highest test ELBO among kept checkpoints), ``"latest"``,
      or an epoch number.

  Raises:
    runs.RunError: not a run directory (or its config.json is damaged), or
      it has no checkpoint.
    checkpoint.CheckpointError: the asked-for checkpoint is missing or corrupt.
  """
  config = runs.load_config(workdir)
  ckpt_dir = Path(workdir) / runs.CHECKPOINT_DIR
  if not ckpt_dir.exists():  # checked here: opening it would create it
    raise RunError(f"{workdir} has no checkpoint yet (no "
                   f"{runs.CHECKPOINT_DIR}/ directory)")
  inputs.existing_dir(ckpt_dir, "the run's checkpoint directory")
  ckpts = checkpoint.Checkpoints(ckpt_dir, keep_latest=config.keep_checkpoints)
  try:
    which = runs.parse_checkpoint(which)
    epoch = {"best": ckpts.best_epoch, "latest": ckpts.latest_epoch}.get(
        which, lambda: which)()
    if epoch is None:
      raise RunError(f"{workdir} has no checkpoint yet")
    model = build_model(config)
    epoch, restored = ckpts.restore(weights_like(config, model), epoch,
                                    partial=True)
  finally:
    ckpts.close()
  return LoadedRun(config, model, restored["state"].variables(), int(epoch))


def compare_runs(workdir_a: str | Path, workdir_b: str | Path,
                 which: str | int = "latest") -> dict[str, Any]:
  """How far two runs are apart: parameters and final test ELBO.

  Returns:
    ``max_relative_param_difference`` (max over leaves of
    max|a - b| / max|b|), ``bitwise_params`` (bool), ``test_elbo_a``,
    ``test_elbo_b``, ``test_elbo_difference`` (nats), ``epochs``, and
    ``bitwise_equal``: the parameters are bitwise equal and so are the
    recorded test ELBOs of the two checkpoints' epochs.
  """
  a, b = load_run(workdir_a, which), load_run(workdir_b, which)
  leaves_a = jax.tree_util.tree_leaves(jax.device_get(a.params))
  leaves_b = jax.tree_util.tree_leaves(jax.device_get(b.params))
  if jax.tree_util.tree_structure(a.params) != jax.tree_util.tree_structure(b.params):
    raise RunError(f"{workdir_a} and {workdir_b} have different models")
  worst = 0.0
  for x, y in zip(leaves_a, leaves_b):
    if x.shape != y.shape:
      raise RunError(f"{workdir_a} and {workdir_b} have different models")
    scale = max(float(np.max(np.abs(y))), 1e-30)
    worst = max(worst, float(np.max(np.abs(x - y))) / scale)
  elbo_a = {r["epoch"]: r["test_elbo"] for r in runs.read_metrics(workdir_a)}
  elbo_b = {r["epoch"]: r["test_elbo"] for r in runs.read_metrics(workdir_b)}
  bitwise_params = all(np.array_equal(x, y)
                       for x, y in zip(leaves_a, leaves_b))
  return {"epochs": [a.epoch, b.epoch],
          "bitwise_equal": bitwise_params and (
              elbo_a.get(a.epoch) == elbo_b.get(b.epoch)),
          "max_relative_param_difference": worst,
          "bitwise_params": bitwise_params,
          "test_elbo_a": elbo_a.get(a.epoch), "test_elbo_b": elbo_b.get(b.epoch),
          "test_elbo_difference": abs(elbo_a.get(a.epoch, np.nan) -
                                      elbo_b.get(b.epoch, np.nan))}


# Provenance fields a reference names when a run does not match it.
REFERENCE_PROVENANCE = ("cpu_model", "cpu_isa", "usable_cores",
                        "xla_cpu_threads", "xla_flags",
                        "versions", "lock_sha256", "git_commit",
                        "device_count")


def param_sha256(params) -> str:
  """sha256 over every parameter leaf's path, dtype, shape and bytes, in
  tree order: equal digests mean bitwise-equal parameters."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(
      jax.device_get(params)):
    leaf = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}"
                  .encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def run_reference(workdir: str | Path, which: str | int = "latest"
                  ) -> dict[str, Any]:
  """What a reference file records of a run: its final metrics (timings
  dropped), the checkpoint's parameter checksum, its numerics mode and the
  provenance that can change bits."""
  workdir = Path(workdir)
  run = load_run(workdir, which)
  records = {r["epoch"]: r for r in runs.read_metrics(workdir)}
  metrics = {k: v for k, v in records.get(run.epoch, {}).items()
             if not k.endswith("_s")}
  provenance = inputs.read_json_object(
      workdir / runs.PROVENANCE_FILE,
      "a run's provenance.json: a JSON object (written by training)")
  return {"epoch": run.epoch, "numerics": run.config.numerics,
          "param_sha256": param_sha256(run.params), "metrics": metrics,
          "provenance": {k: provenance.get(k) for k in REFERENCE_PROVENANCE}}


def sweep_reference(sweep_dir: str | Path) -> dict[str, Any]:
  """:func:`run_reference` of every member of a sweep, by name."""
  return {"members": {m.name: run_reference(m)
                      for m in runs.member_dirs(sweep_dir)}}


# What a reference file of one run holds (run_reference), by JSON type.
REFERENCE_KEYS = {"epoch": int, "param_sha256": str, "metrics": dict,
                  "provenance": dict}
REFERENCE_EXPECTED = (
    "a reference file: a JSON object with 'epoch', 'param_sha256', "
    "'metrics' and 'provenance' (a run) or 'members' (a sweep), as "
    "scripts/compare.py --write_reference writes it")


def read_reference(path: str | Path, *, flag: str | None = None
                   ) -> dict[str, Any]:
  """A reference file (:func:`run_reference`, or :func:`sweep_reference`'s
  ``{"members": {name: reference}}``), checked before it is used.

  Raises:
    RunError: missing, a directory, empty, truncated, not a JSON object, a
      key of REFERENCE_KEYS (or ``members``) missing or of another type; one
      line naming the file (``flag=...`` names the flag too) and what was
      expected.
  """
  where = f"{flag}={str(path)!r}" if flag else str(path)
  reference = inputs.json_object(
      inputs.read_json(path, REFERENCE_EXPECTED, flag=flag), where,
      REFERENCE_EXPECTED)
  if "members" not in reference:
    return inputs.json_object(reference, where, REFERENCE_EXPECTED,
                              REFERENCE_KEYS)
  members = inputs.json_object(reference, where, REFERENCE_EXPECTED,
                               {"members": dict})["members"]
  if not members:
    raise RunError(f"{where} has no members; expected {REFERENCE_EXPECTED}")
  for name, member in members.items():
    inputs.json_object(member, f"{where} (member {name!r})",
                       REFERENCE_EXPECTED, REFERENCE_KEYS)
  return reference


def compare_to_reference(path: str | Path, reference: dict[str, Any]
                         ) -> dict[str, Any]:
  """A run (or, for a reference with ``members``, a sweep) against a
  reference: ``verdict`` "bitwise equal" or how far off, the largest metric
  difference, and the provenance fields that differ."""
  if "members" in reference:
    results = {name: compare_to_reference(Path(path) / name, ref)
               for name, ref in reference["members"].items()}
    equal = all(r["bitwise_equal"] for r in results.values())
    return {"verdict": "bitwise equal" if equal else "differs",
            "bitwise_equal": equal, "members": results}
  here = run_reference(path, reference["epoch"])
  differences = {}
  for key, value in reference["metrics"].items():
    mine = here["metrics"].get(key)
    if isinstance(value, (int, float)) and isinstance(mine, (int, float)):
      if mine != value:
        differences[key] = abs(mine - value)
    elif mine != value:
      differences[key] = [value, mine]
  params_equal = here["param_sha256"] == reference["param_sha256"]
  equal = params_equal and not differences
  numeric = [d for d in differences.values() if isinstance(d, float)]
  provenance = {k: {"reference": v, "this run": here["provenance"].get(k)}
                for k, v in reference["provenance"].items()
                if here["provenance"].get(k) != v}
  if reference.get("numerics") != here["numerics"]:
    provenance["numerics"] = {"reference": reference.get("numerics"),
                              "this run": here["numerics"]}
  return {"verdict": "bitwise equal" if equal else
          f"differs: params {'equal' if params_equal else 'differ'}, "
          f"largest metric difference {max(numeric, default=0.0):.3g}",
          "bitwise_equal": equal,
          "param_sha256_equal": params_equal,
          "metric_differences": differences,
          "test_elbo": [reference["metrics"].get("test_elbo"),
                        here["metrics"].get("test_elbo")],
          "provenance_differences": provenance}


def restore_common_epoch(ckpts: list[checkpoint.Checkpoints], like,
                         log: Callable[[str], None]) -> tuple[int, list[Any]]:
  """The newest epoch every member of a group has a *valid* checkpoint of,
  and the restored states; (0, []) when there is none. A corrupt checkpoint
  is reported and the next older common epoch is tried."""
  common = None
  for c in ckpts:
    epochs = set(c.epochs())
    common = epochs if common is None else common & epochs
  for epoch in sorted(common or (), reverse=True):
    try:
      return epoch, [c.restore(like, epoch)[1]["state"] for c in ckpts]
    except CheckpointError as e:
      log(f"warning: {e}; trying an older checkpoint")
  return 0, []
