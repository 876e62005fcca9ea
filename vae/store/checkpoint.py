"""Checkpoints of one training run, on Orbax's v1 API (``ocp.training.Checkpointer``).

Usage::

  with Checkpoints(workdir / "checkpoints", keep_latest=3, keep_best=1) as ckpts:
    if ckpts.latest_epoch() is not None:
      epoch, state = ckpts.restore(state)        # newest *valid* checkpoint
    ...
    ckpts.save(epoch, state, metrics={"test_elbo": elbo})

On-disk layout (one directory per kept epoch; Orbax's standard step layout)::

  <directory>/                       e.g. runs/<name>/checkpoints
    <epoch>/                         committed checkpoint, plain integer name
      _CHECKPOINT_METADATA           Orbax step metadata (JSON); its
                                     custom_metadata["vae.checkpoint"] is our
                                     integrity record: format version, epoch,
                                     metrics, and for every leaf its path
                                     ("params/Dense_0/kernel"), shape, dtype
                                     and sha256 of its bytes
      metrics/metrics                the metrics passed to save() (JSON)
      state/                         the pytree: Orbax PyTree checkpointable
        _METADATA, manifest.ocdbt,   (OCDBT/zarr3 via TensorStore: tree
        d/..., ocdbt.process_0/...   structure, array metadata, array data)
      commit_success.txt
    <epoch>.orbax-checkpoint-tmp     a save in progress (or cut short by a
                                     crash): never listed, removed on the
                                     next open / next save of that epoch
    <epoch>.corrupt-<timestamp>      a committed checkpoint whose metrics
                                     file was found unreadable on open, moved
                                     aside (kept for inspection, not listed)

Atomicity: Orbax writes everything (arrays, metrics, step metadata including
our integrity record) into ``<epoch>.orbax-checkpoint-tmp`` and publishes it
with one ``rename`` to ``<epoch>`` (``AtomicRenameTemporaryPath``, the default
on local file systems), so a process killed at any moment leaves either no
``<epoch>`` directory or a complete one. Saves are synchronous: ``save()``
returns after the rename, after garbage collection of checkpoints that the
preservation policy no longer keeps (which happens only after the new one is
committed), and after an fsync of the new checkpoint's files and of
``<directory>``.

Corruption detection: TensorStore/OCDBT checks CRCs of its b-tree nodes but
*not* of compressed chunk data, so a flipped byte inside an array's data can be
read back as silently wrong numbers. ``restore`` therefore recomputes the
sha256 of every restored leaf and compares it with the integrity record (and
the saved metrics with the record's copy). Any failure -- unreadable files,
missing record, checksum mismatch -- marks the checkpoint corrupt; with
``epoch=None`` that is warned about (``CheckpointWarning`` and the logger,
naming the checkpoint's path) and the next newest is tried.

Limits: single process (no multi-host), one process per run directory at a
time (opening a directory removes unfinished ``*.orbax-checkpoint-tmp`` saves,
including those of a process still writing). Deleting old checkpoints (Orbax's
garbage collection) is not atomic: a SIGKILL during it can leave a partially
deleted *old* checkpoint, listed by ``epochs()`` until the next save deletes it;
``restore`` detects it as corrupt.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

try:
  import orbax.checkpoint.v1 as ocp
except ImportError:  # orbax-checkpoint < 0.12 (or where v1 is still experimental)
  import orbax.checkpoint.experimental.v1 as ocp

from vae.errors import CheckpointError, CheckpointWarning

__all__ = ["CheckpointError", "CheckpointWarning", "Checkpoints",
           "best_epoch_on_disk"]

log = logging.getLogger(__name__)

_RECORD_KEY = "vae.checkpoint"  # the format's key: never changes
_FORMAT = 1
_STEP_NAME = re.compile(r"^(0|[1-9]\d*)$")
_MAX_ERROR_CHARS = 600


class _Corrupt(Exception):
  """Internal: a checkpoint is unreadable or fails verification."""


def _key_name(k: Any) -> str:
  if isinstance(k, jax.tree_util.DictKey):
    return str(k.key)
  if isinstance(k, jax.tree_util.GetAttrKey):
    return k.name
  if isinstance(k, jax.tree_util.SequenceKey):
    return str(k.idx)
  if isinstance(k, jax.tree_util.FlattenedIndexKey):
    return str(k.key)
  return str(k)


def _path_str(path: tuple) -> str:
  """``('params', 'Dense_0', 'kernel')``-like key path as "params/Dense_0/kernel".

  NamedTuple fields and dict keys map to the same name, tuple/list entries to
  their index, so the result does not depend on whether a NamedTuple came back
  as a NamedTuple or as a dict.
  """
  return "/".join(_key_name(k) for k in path) or "<root>"


def _flatten(tree: Any) -> tuple[list[str], list[Any], Any]:
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [_path_str(p) for p, _ in with_path]
  if len(set(paths)) != len(paths):
    dup = sorted(p for p, n in collections.Counter(paths).items() if n > 1)
    raise CheckpointError(f"ambiguous pytree leaf paths {dup}")
  return paths, [x for _, x in with_path], treedef


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    shape, dtype = tuple(int(d) for d in x.shape), np.dtype(x.dtype)
  else:
    a = np.asarray(x)
    shape, dtype = a.shape, a.dtype
  return shape, np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _sha256(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _clip(msg: str) -> str:
  msg = " ".join(str(msg).split())
  return msg if len(msg) <= _MAX_ERROR_CHARS else msg[:_MAX_ERROR_CHARS] + " ..."


def _fsync(path: Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _fsync_tree(root: Path) -> None:
  for dirpath, _, filenames in os.walk(root):
    for name in filenames:
      _fsync(Path(dirpath) / name)
    _fsync(Path(dirpath))


def _rank(metrics: Any, best_metric: str, best_mode: str) -> float:
  """Larger is better; a missing or non-finite metric ranks -inf."""
  try:
    v = float(metrics[best_metric])
  except (KeyError, TypeError, ValueError):
    return -math.inf
  if not math.isfinite(v):
    return -math.inf
  return v if best_mode == "max" else -v


def _best_of(ranked) -> int | None:
  """The epoch of the best rank among ``(epoch, rank)`` pairs in ascending
  epoch order (the latest among ties); None if none ranks above -inf."""
  best, best_rank = None, -math.inf
  for epoch, r in ranked:
    if r > -math.inf and r >= best_rank:
      best, best_rank = epoch, r
  return best


def best_epoch_on_disk(directory: str | os.PathLike, *,
                       best_metric: str = "test_elbo",
                       best_mode: str = "max") -> int | None:
  """:meth:`Checkpoints.best_epoch` of a checkpoint directory, read without
  opening it with Orbax (which removes unfinished saves), so that a report
  may read the directory of a run another process is training. Reads the
  ``metrics/metrics`` file of every committed ``<epoch>/`` directory."""
  directory = Path(directory)
  if not directory.is_dir():
    return None
  ranked = []
  for step_dir in directory.iterdir():
    if not (_STEP_NAME.match(step_dir.name) and step_dir.is_dir()):
      continue
    try:
      metrics = json.loads((step_dir / "metrics" / "metrics").read_text())
    except (OSError, ValueError):
      metrics = None
    ranked.append((int(step_dir.name), _rank(metrics, best_metric, best_mode)))
  return _best_of(sorted(ranked))


class Checkpoints:
  """Checkpoints of one run in `directory` (e.g. runs/<name>/checkpoints).

  Keeps the latest `keep_latest` checkpoints and the best `keep_best` by a metric
  (`best_metric`, default 'test_elbo'; `best_mode` 'max': higher is better, 'min':
  lower is better). Checkpoints whose metric is missing or not finite never count
  as best. ``keep_epochs``: epochs kept whenever they are saved (e.g. the
  stage boundaries of a schedule, for later evaluation). Retention is
  Orbax's: ``preservation_policies.AnyPreservationPolicy([LatestN(
  keep_latest), BestN(keep_best), CustomSteps(keep_epochs)])``, applied
  after each save.
  """

  def __init__(self, directory: str | os.PathLike, *, keep_latest: int = 3,
               keep_best: int = 1, best_metric: str = "test_elbo",
               best_mode: str = "max", keep_epochs: Sequence[int] = ()):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if keep_latest < 0 or keep_best < 0 or keep_latest + keep_best < 1:
      raise ValueError(
          f"need keep_latest >= 0, keep_best >= 0 and at least one kept "
          f"checkpoint, got keep_latest={keep_latest}, keep_best={keep_best}")
    self.directory = Path(directory).absolute()
    self.keep_latest, self.keep_best = int(keep_latest), int(keep_best)
    self.best_metric, self.best_mode = best_metric, best_mode
    try:
      self.directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise CheckpointError(f"{self.directory}: cannot create the checkpoint "
                            f"directory: {e}") from e
    self._quarantine_unreadable_metrics()

    policies = ocp.training.preservation_policies
    keep = []
    if self.keep_latest:
      keep.append(policies.LatestN(n=self.keep_latest))
    if self.keep_best:
      keep.append(policies.BestN(get_metric_fn=self._rank, n=self.keep_best,
                                 reverse=False,  # ascending by _rank: keep the top
                                 keep_checkpoints_without_metrics=False))
    self.keep_epochs = tuple(int(e) for e in keep_epochs)
    if self.keep_epochs:
      keep.append(policies.CustomSteps(steps=list(self.keep_epochs)))
    try:
      self._ckptr = ocp.training.Checkpointer(
          self.directory,
          # Every call to save() saves (the caller decides when): interval 1.
          # save() first removes any epoch >= the one being saved, so Orbax's
          # "step must exceed the latest step" check never refuses either.
          save_decision_policy=ocp.training.save_decision_policies
          .FixedIntervalPolicy(1),
          preservation_policy=policies.AnyPreservationPolicy(keep),
          # Remove <epoch>.orbax-checkpoint-tmp left by a crash mid-save.
          cleanup_tmp_directories=True,
      )
    except Exception as e:
      raise CheckpointError(f"{self.directory}: cannot open the checkpoint "
                            f"directory: {_clip(e)}") from e
    self._closed = False

  # -- queries ---------------------------------------------------------------

  def _rank(self, metrics: Any) -> float:
    """Sort key for BestN/best_epoch: larger is better; bad/missing -> -inf."""
    return _rank(metrics, self.best_metric, self.best_mode)

  def epochs(self) -> list[int]:
    """Committed checkpoints, ascending.

    Never includes an unfinished save. Damage after commit (bit rot, or a crash
    while deleting an old checkpoint) is detected by `restore`, not here.
    """
    return [c.step for c in self._ckptr.checkpoints]

  def latest_epoch(self) -> int | None:
    epochs = self.epochs()
    return epochs[-1] if epochs else None

  def best_epoch(self) -> int | None:
    """The kept checkpoint with the best `best_metric` (latest among ties)."""
    return _best_of((c.step, self._rank(c.metrics))
                    for c in self._ckptr.checkpoints)

  def metrics(self, epoch: int) -> dict[str, float]:
    """The metrics saved with `epoch`."""
    for c in self._ckptr.checkpoints:
      if c.step == epoch:
        return dict(c.metrics or {})
    raise CheckpointError(f"{self._path(epoch)}: no checkpoint for epoch {epoch} "
                          f"(kept: {self.epochs()})")

  def _path(self, epoch: int) -> Path:
    return self.directory / str(int(epoch))

  # -- save ------------------------------------------------------------------

  def save(self, epoch: int, state: Any, *, metrics: dict[str, float]) -> None:
    """Saves `state` as the checkpoint of `epoch`; returns once it is durable.

    Any existing checkpoint of `epoch` or a later one is deleted first: saving
    epoch N means training continued from an earlier checkpoint, so those are
    superseded (and typically corrupt, which is why training went back).
    """
    epoch = int(epoch)
    if epoch < 0:
      raise CheckpointError(f"{self._path(epoch)}: epoch must be >= 0, got {epoch}")
    path = self._path(epoch)
    try:
      metrics = {str(k): float(v) for k, v in dict(metrics).items()}
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"{path}: metrics must map str to float: {e}") from e
    paths, leaves, treedef = _flatten(state)
    arrays, record_leaves = [], {}
    for p, x in zip(paths, leaves):
      try:
        a = x if isinstance(x, jax.Array) else jax.numpy.asarray(x)
        host = np.asarray(jax.device_get(a))
      except Exception as e:
        raise CheckpointError(f"{path}: cannot save leaf {p} of type "
                              f"{type(x).__name__}: {_clip(e)}") from e
      # Orbax refuses zero-size arrays; they carry no data, so they are saved
      # as None and rebuilt from the record's shape and dtype.
      arrays.append(a if host.size else None)
      record_leaves[p] = {"shape": list(host.shape), "dtype": host.dtype.name,
                          "sha256": _sha256(host)}
    record = {"format": _FORMAT, "epoch": epoch, "metrics": metrics,
              "leaves": record_leaves}

    superseded = [e for e in self.epochs() if e >= epoch]
    if superseded:
      msg = (f"{path}: saving epoch {epoch} supersedes existing checkpoint(s) "
             f"{superseded} in {self.directory}; deleting them")
      log.warning(msg)
      warnings.warn(msg, CheckpointWarning, stacklevel=2)
      for e in sorted(superseded, reverse=True):
        self._ckptr.delete(e)
    try:
      saved = self._ckptr.save(
          epoch, jax.tree_util.tree_unflatten(treedef, arrays), metrics=metrics,
          custom_metadata={_RECORD_KEY: record})
      self._ckptr.wait()
    except Exception as e:
      raise CheckpointError(f"{path}: saving epoch {epoch} failed: {_clip(e)}") from e
    if not saved:
      raise CheckpointError(f"{path}: Orbax declined to save epoch {epoch}")
    try:
      if path.exists():  # may already be gone (not kept by the policy)
        _fsync_tree(path)
      _fsync(self.directory)
    except OSError as e:
      raise CheckpointError(f"{path}: fsync after save failed: {e}") from e

  # -- restore ---------------------------------------------------------------

  def restore(self, like: Any, epoch: int | None = None, *,
              partial: bool = False) -> tuple[int, Any]:
    """Restores (epoch, state) with the structure, shapes and dtypes of `like`.

    `like` is a pytree like the saved state (arrays or jax.ShapeDtypeStruct);
    with `partial`, like a part of it (e.g. the parameters without the
    optimizer state): only its leaves are read and verified.
    epoch=None restores the newest valid checkpoint, warning about and skipping
    corrupt newer ones. Raises CheckpointError when no (or the requested)
    checkpoint is valid, or when the checkpoint does not fit `like` (its message
    names each mismatching leaf and both shapes).
    """
    kept = self.epochs()
    if epoch is not None:
      epoch = int(epoch)
      if epoch not in kept:
        raise CheckpointError(f"{self._path(epoch)}: no checkpoint for epoch "
                              f"{epoch} (kept: {kept})")
      try:
        return epoch, self._restore_one(epoch, like, partial)
      except _Corrupt as e:
        raise CheckpointError(str(e)) from e
    if not kept:
      raise CheckpointError(f"{self.directory}: no checkpoints to restore")
    failures = []
    for e in reversed(kept):
      try:
        return e, self._restore_one(e, like, partial)
      except _Corrupt as err:
        msg = f"skipping corrupt checkpoint {err}"
        log.warning(msg)
        warnings.warn(msg, CheckpointWarning, stacklevel=2)
        failures.append(str(err))
    raise CheckpointError(f"{self.directory}: no valid checkpoint among epochs "
                          f"{kept}: " + "; ".join(failures))

  def _record(self, epoch: int) -> dict[str, Any]:
    path = self._path(epoch)
    try:
      custom = self._ckptr.metadata(epoch).custom_metadata
    except Exception as e:
      raise _Corrupt(f"{path}: unreadable metadata: {_clip(e)}") from e
    record = (custom or {}).get(_RECORD_KEY) if isinstance(custom, dict) else None
    if (not isinstance(record, dict) or record.get("format") != _FORMAT
        or record.get("epoch") != epoch
        or not isinstance(record.get("leaves"), dict)
        or not isinstance(record.get("metrics"), dict)):
      raise _Corrupt(f"{path}: integrity record missing or malformed in its "
                     f"step metadata (_CHECKPOINT_METADATA)")
    return record

  def _restore_one(self, epoch: int, like: Any, partial: bool = False) -> Any:
    path = self._path(epoch)
    record = self._record(epoch)
    saved = record["leaves"]
    paths, like_leaves, treedef = _flatten(like)

    # Does the checkpoint fit `like`? (A model/config mismatch, not corruption.)
    problems = []
    missing = [p for p in paths if p not in saved]
    extra = [] if partial else sorted(set(saved) - set(paths))
    if missing:
      problems.append(f"not in checkpoint: {', '.join(missing)}")
    if extra:
      problems.append(f"not in model: {', '.join(extra)}")
    for p, x in zip(paths, like_leaves):
      if p in saved:
        want, _ = _shape_dtype(x)
        have = tuple(saved[p]["shape"])
        if have != want:
          problems.append(f"{p}: checkpoint {have} vs model {want}")
    if problems:
      raise CheckpointError(f"{path}: checkpoint does not match the model: "
                            + "; ".join(problems))

    info = {c.step: c.metrics for c in self._ckptr.checkpoints}.get(epoch)
    if json.dumps(info, sort_keys=True) != json.dumps(record["metrics"],
                                                      sort_keys=True):
      raise _Corrupt(f"{path}: metrics file (metrics/metrics) missing or not "
                     f"what was saved: {info!r}")

    default_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract, shardings = [], []
    for p, x in zip(paths, like_leaves):
      shape, _ = _shape_dtype(x)
      shardings.append(getattr(x, "sharding", None) or default_sharding)
      abstract.append(
          jax.ShapeDtypeStruct(shape, np.dtype(saved[p]["dtype"]),
                               sharding=shardings[-1])
          if math.prod(shape) else None)  # zero-size: saved as None
    try:
      context = ocp.Context()
      context.pytree.loading.partial_load = partial
      with context:
        loaded = self._ckptr.load(
            epoch, jax.tree_util.tree_unflatten(treedef, abstract))
      loaded_paths, loaded_leaves, _ = _flatten(loaded)
    except Exception as e:
      raise _Corrupt(f"{path}: unreadable: {type(e).__name__}: {_clip(e)}") from e
    by_path = dict(zip(loaded_paths, loaded_leaves))

    out = []
    for p, x, sharding, sds in zip(paths, like_leaves, shardings, abstract):
      if sds is None:
        a = host = np.zeros(saved[p]["shape"], saved[p]["dtype"])
      elif p not in by_path:
        raise _Corrupt(f"{path}: leaf {p} missing from the restored state")
      else:
        a = by_path[p]
        host = np.asarray(jax.device_get(a))
      meta = saved[p]
      if (list(host.shape) != meta["shape"] or host.dtype.name != meta["dtype"]
          or _sha256(host) != meta["sha256"]):
        raise _Corrupt(f"{path}: leaf {p} fails its sha256/shape/dtype check "
                       f"(checkpoint data corrupted)")
      _, dtype = _shape_dtype(x)
      if not isinstance(a, jax.Array):
        a = jax.device_put(host, sharding)
      out.append(a if a.dtype == dtype else a.astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)

  # -- housekeeping ----------------------------------------------------------

  def _quarantine_unreadable_metrics(self) -> None:
    """Moves aside committed checkpoints whose metrics file is unreadable.

    Orbax's Checkpointer reads every checkpoint's metrics when it opens a
    directory and raises on a damaged metrics file, which would make the whole
    run unopenable; such a checkpoint is renamed to <epoch>.corrupt-<time> (and
    no longer listed) before Orbax sees it.
    """
    for step_dir in self.directory.iterdir():
      if not (_STEP_NAME.match(step_dir.name) and step_dir.is_dir()):
        continue
      metrics_file = step_dir / "metrics" / "metrics"
      if not metrics_file.exists():
        continue
      try:
        json.loads(metrics_file.read_text())
      except (OSError, ValueError) as e:
        dest = step_dir.with_name(
            f"{step_dir.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        msg = (f"skipping corrupt checkpoint {step_dir}: unreadable metrics file "
               f"{metrics_file} ({_clip(e)}); moved to {dest}")
        log.warning(msg)
        warnings.warn(msg, CheckpointWarning, stacklevel=3)
        step_dir.rename(dest)

  def close(self) -> None:
    """Finish pending saves and release the directory.

    Raises:
      CheckpointError: a pending save failed (e.g. the disk is full).
    """
    if not getattr(self, "_closed", True):
      self._closed = True
      try:
        self._ckptr.close()
      except Exception as e:  # orbax re-raises a failed background save
        raise CheckpointError(f"{self.directory}: finishing the last save "
                              f"failed: {_clip(e)}") from None

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      self.close()
    except CheckpointError:
      if exc_type is None:
        raise
      # An error is already on its way out, and it names the failure (a
      # failed save re-raised by close, e.g. a full disk): keep that one.

  def __repr__(self) -> str:
    return (f"Checkpoints({str(self.directory)!r}, keep_latest={self.keep_latest}, "
            f"keep_best={self.keep_best}, best_metric={self.best_metric!r}, "
            f"best_mode={self.best_mode!r})")
