"""The run loop: train (or resume) one run, or a group of sweep members, in
their run directories.

:func:`fit` trains one run; :func:`fit_members` trains runs that differ only in
traced fields as one compiled program (a run is a group of one). Each epoch
of a group is a few named steps, read top to bottom in :func:`_run_epochs`:

1. :func:`train_and_evaluate`: one compiled epoch and the test ELBO terms of
   every member (:mod:`vae.trainer`);
2. :func:`member_record`: a member's metrics record, reduced on the host in
   float64, and whether it diverged;
3. :func:`write_member`: ``metrics.jsonl``, TensorBoard and the checkpoint;
4. :func:`summaries`, once the loop ends.

What the caller wants to see or stop travels in one :class:`Hooks` object.
Failures lose nothing: every workdir is locked against a second process;
``metrics.jsonl`` is appended before that epoch's checkpoint is written and
cut back to the checkpoint on resume; when ``hooks.should_stop()`` returns a
reason (e.g. a signal name) every member is checkpointed and
:class:`~vae.errors.Interrupted` is raised; a member whose loss turns
non-finite is stopped at that epoch's end and marked diverged
(``diverged.json``), the others go on.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np

from vae import checkpoint, devices as devices_lib, errors, grouping, optim
from vae import preprocess, restore, rng, runs, tensorboard
from vae import config as config_lib
from vae import trainer as trainer_lib
from vae.errors import ConfigError, Diverged, Interrupted, RunError
from vae.objectives import TRACED_FIELDS, dataset_metrics, epoch_metrics
from vae.state import stack, unstack

__all__ = ["Hooks", "fit", "fit_members", "prepare_workdir"]

# Deprecated aliases (one release): names that moved out of this module.
_MOVED = {
    "load_run": "vae.restore", "compare_runs": "vae.restore",
    "LoadedRun": "vae.restore", "TrainState": "vae.state",
    "Hyper": "vae.objectives:TracedSettings",
    "hyper_from_config": "vae.objectives:traced_settings",
    "kl_weight": "vae.objectives", "loss_fn": "vae.objectives",
    "Objective": "vae.objectives", "KL_SCHEDULES": "vae.objectives",
    "member_keys": "vae.rng", "data_key": "vae.rng", "epoch_keys": "vae.rng",
    "MemberKeys": "vae.rng", "INIT_STREAM": "vae.rng",
    "TRAIN_STREAM": "vae.rng", "EVAL_STREAM": "vae.rng",
    "DATA_STREAM": "vae.rng",
    "make_optimizer": "vae.optim", "learning_rate_schedule": "vae.optim",
    "iwae_stage_boundaries": "vae.optim",
    "current_learning_rate": "vae.optim",
    "train_step": "vae.step", "train_epoch": "vae.step",
    "all_finite": "vae.step",
    "evaluation_terms": "vae.bounds:dataset_elbo_terms",
    "Trainer": "vae.trainer", "make_trainer": "vae.trainer",
    "start_group": "vae.trainer", "Group": "vae.trainer",
    "PerDevice": "vae.devices", "use_cpu_cores_as_devices": "vae.devices",
    "member_devices": "vae.devices", "place": "vae.devices",
    "prepare_images": "vae.preprocess", "prepare_test_images": "vae.preprocess",
    "static_signature": "vae.grouping", "summary_table": "vae.report",
    "DIVERGED_FILE": "vae.runs", "build_model": "vae.models",
    "init_params": "vae.models",
}
__getattr__ = errors.moved(__name__, _MOVED)


def _never() -> None:
  return None


class Hooks(NamedTuple):
  """What the caller of the run loop sees and controls.

  Attributes:
    log: called with each one-line message (resuming, diverged, ...).
    should_stop: called after every epoch; a reason (e.g. "SIGTERM") stops
      the group after checkpointing every member.
    show_progress: draw a progress bar over epochs on a terminal; elsewhere
      one line every ``int(show_progress)`` epochs (True: every epoch).
    name: the bar's label and the messages' subject (default: the first
      member's directory name).
  """

  log: Callable[[str], None] = print
  should_stop: Callable[[], str | None] = _never
  show_progress: bool | int = True
  name: str | None = None


def fit(config: ml_collections.ConfigDict, workdir: str | Path, *,
        progress: bool = True, log: Callable[[str], None] = print,
        should_stop: Callable[[], str | None] | None = None) -> dict[str, Any]:
  """Train (or resume) the run described by ``config`` in ``workdir``.

  The same compiled program as a sweep, with one member. Writes the
  resolved config, provenance, ``metrics.jsonl`` (one record per epoch;
  appended before that epoch's checkpoint is written, and cut back to the
  checkpoint on resume) and checkpoints. A finished run is left as is.

  Returns:
    A summary: ``epoch`` (last), ``best_epoch``, ``final`` (the last metrics
    record), ``resumed_from`` (epoch or None), ``already_finished`` (bool).
  """
  return fit_members([config], [workdir], progress=progress, log=log,
                     should_stop=should_stop)[0]


def fit_members(configs: list[ml_collections.ConfigDict],
                workdirs: list[str | Path], *, devices=None,
                progress: bool = True, desc: str | None = None,
                log: Callable[[str], None] = print,
                should_stop: Callable[[], str | None] | None = None
                ) -> list[dict[str, Any]]:
  """Train (or resume) several runs that differ only in traced fields, as one
  compiled program over a stacked member axis.

  Each member is a complete run in its own workdir, exactly as :func:`fit`
  writes it. With ``devices`` (more than one), the member axis is sharded
  over them (padded with copies of the last member, which are not saved).
  ``progress``, ``desc``, ``log`` and ``should_stop`` become the
  :class:`Hooks` of the loop.

  Returns:
    One summary per member (see :func:`fit`), with ``status`` "finished" or
    "diverged".
  """
  hooks = Hooks(log, should_stop or _never, progress, desc)
  if not configs or len(configs) != len(workdirs):
    raise ValueError("fit_members needs one workdir per config")
  for config in configs:
    config_lib.validate(config)
  config_lib.check_training_memory(configs)
  devices_lib.configure_numerics(configs[0].numerics)
  if len({grouping.static_signature(c) for c in configs}) > 1:
    raise ConfigError(
        "fit_members: members differ in a field that is not traced; only "
        f"{TRACED_FIELDS} may differ (group the others with vae.sweep)")
  dataset = preprocess.load_dataset(configs[0])
  for config in configs:
    _check_data_shape(config, dataset)
  first = configs[0]
  if dataset.train_images.shape[0] < first.batch_size:
    raise ConfigError(
        f"config.batch_size={first.batch_size} is not accepted: at most the "
        f"{dataset.train_images.shape[0]} training examples of "
        f"{first.dataset!r}")
  with contextlib.ExitStack() as locks:
    # Lock first: a process refused because another holds the run writes
    # nothing there (it used to rewrite the live run's config).
    workdirs = [runs.ensure_writable(w) for w in workdirs]
    for w in workdirs:
      locks.enter_context(runs.WorkdirLock(w))
    workdirs = [prepare_workdir(w, c, hooks.log)
                for w, c in zip(workdirs, configs)]
    return _train_group(configs, workdirs, dataset, devices, hooks)


def _check_data_shape(config, dataset) -> None:
  """``config.data_shape`` describes the dataset's images; it is not a
  setting, so anything else is refused (it used to be silently replaced)."""
  shape = tuple(int(d) for d in dataset.image_shape)
  if tuple(config.data_shape) != shape:
    raise ConfigError(
        f"config.data_shape={tuple(config.data_shape)!r} is not accepted: "
        f"the images of dataset {config.dataset!r} are {shape}; data_shape "
        "is the dataset's image shape (leave it unset)")


def prepare_workdir(workdir: str | Path, config: ml_collections.ConfigDict,
                    log: Callable[[str], None] = print) -> Path:
  """Create ``workdir`` and record the config and provenance, or check that
  the config matches the run already there. Call it holding the workdir's
  lock. A run that already has more epochs than ``config.num_epochs`` is
  left as it is (its config is not rewritten; the loop has nothing to do).

  Raises:
    runs.RunError: the directory is not writable, or it holds a run whose
      config differs in a field other than ``runs.RESUMABLE_CHANGES``.
  """
  workdir = runs.ensure_writable(workdir)
  new = runs.config_to_dict(config)
  runs.check_resumable(workdir, new,
                       runs.config_to_dict(config_lib.default_config()))
  trained = runs.epochs_recorded(workdir)
  if trained > config.num_epochs:
    log(f"{workdir}: the run has {trained} epochs, more than num_epochs="
        f"{config.num_epochs}; its config.json is left as it is.")
    return workdir
  runs.write_json_atomic(workdir / runs.CONFIG_FILE, new)
  runs.write_json_atomic(workdir / runs.PROVENANCE_FILE, runs.provenance())
  return workdir


class _Group(NamedTuple):
  """A group being trained: its members' configs, directories and
  checkpoints, the compiled programs and the device-resident images."""

  configs: list[ml_collections.ConfigDict]
  workdirs: list[Path]
  ckpts: list[checkpoint.Checkpoints]
  compiled: trainer_lib.Group
  train_images: jax.Array
  test_images: jax.Array


def _train_group(configs, workdirs, dataset, devices, hooks: Hooks
                 ) -> list[dict[str, Any]]:
  first = configs[0]
  train_images, test_images = preprocess.prepare_images(first, dataset)
  compiled = trainer_lib.start_group(configs, train_images.shape[0], devices)
  train_images, test_images = (devices_lib.place(x, compiled.replicated)
                               for x in (train_images, test_images))
  with contextlib.ExitStack() as stack:
    ckpts = [stack.enter_context(checkpoint.Checkpoints(
        w / runs.CHECKPOINT_DIR, keep_latest=first.keep_checkpoints,
        keep_best=1, best_metric="test_elbo", keep_epochs=first.keep_epochs))
             for w in workdirs]
    group = _Group(configs, workdirs, ckpts, compiled, train_images,
                   test_images)
    state, resumed_from = _resume(group, hooks)
    for w in workdirs:
      runs.truncate_metrics(w, resumed_from or 0)
      (w / runs.DIVERGED_FILE).unlink(missing_ok=True)
    return _run_epochs(group, state, resumed_from, hooks)


def _resume(group: _Group, hooks: Hooks):
  """(stacked state, epoch it resumes from or None): the newest epoch every
  member has a valid checkpoint of, else the fresh initial state."""
  state = group.compiled.state
  num_padded = jax.tree_util.tree_leaves(group.compiled.settings)[0].shape[0]
  like = {"state": unstack(state, 0), "epoch": np.int32(0)}
  resumed_from, restored = restore.restore_common_epoch(group.ckpts, like,
                                                        hooks.log)
  if not resumed_from:
    return state, None
  restored += [restored[-1]] * (num_padded - len(group.configs))
  return (devices_lib.place(stack(restored), group.compiled.member_sharding),
          resumed_from)


class EpochOutputs(NamedTuple):
  """One epoch of every member of a group, read back to the host.

  Attributes:
    state: the group's new (stacked, device-resident) state.
    train_terms: the scanned epoch's per-step terms, ``[M, steps, ...]``.
    test_log_likelihood: ``[M, N]`` log p(x | z) of the test set.
    test_kl_per_dim: ``[M, N, latent_dim]``.
    learning_rates: ``[M]`` the learning rate each member last used.
    epoch_s, eval_s: wall seconds of training and of evaluation.
  """

  state: Any
  train_terms: dict[str, np.ndarray]
  test_log_likelihood: np.ndarray
  test_kl_per_dim: np.ndarray
  learning_rates: np.ndarray
  epoch_s: float
  eval_s: float


def train_and_evaluate(group: _Group, state, epoch: int) -> EpochOutputs:
  """Step 1: one compiled epoch of every member, then the test ELBO terms
  (:func:`vae.bounds.dataset_elbo_terms`, the same keys every epoch)."""
  compiled = group.compiled
  t0 = time.perf_counter()
  state, train_terms = compiled.trainer.train_epoch(
      state, group.train_images, epoch, compiled.keys.train, compiled.settings)
  train_terms = jax.device_get(train_terms)
  t1 = time.perf_counter()
  test_log_lik, test_kl = jax.device_get(compiled.trainer.evaluation_terms(
      state.variables(), group.test_images, compiled.keys.eval))
  t2 = time.perf_counter()
  learning_rates = np.asarray(optim.current_learning_rate(state.opt_state))
  return EpochOutputs(state, train_terms, test_log_lik, test_kl,
                      learning_rates, t1 - t0, t2 - t1)


def member_record(outputs: EpochOutputs, index: int,
                  config: ml_collections.ConfigDict, epoch: int
                  ) -> tuple[dict[str, Any], int, bool]:
  """Step 2: member ``index``'s ``metrics.jsonl`` record of this epoch
  (float64 host reductions, nats per example), its count of non-finite
  steps, and whether it diverged (a non-finite step with ``on_nan="stop"``,
  or a non-finite test ELBO)."""
  num_data_dims = math.prod(config.data_shape)
  train_metrics = epoch_metrics(
      {k: v[index] for k, v in outputs.train_terms.items()}, config.free_bits,
      num_data_dims, loss_is_negative_bound=config.objective == "iwae")
  test_metrics = dataset_metrics(outputs.test_log_likelihood[index],
                                 outputs.test_kl_per_dim[index], config.beta,
                                 num_data_dims)
  skipped = train_metrics.pop("nonfinite_steps")
  diverged = bool((skipped and config.on_nan == "stop")
                  or not math.isfinite(test_metrics["elbo"]))
  record = {"epoch": epoch,
            **{f"train_{k}": v for k, v in train_metrics.items()},
            "train_skipped_steps": skipped,
            **{f"test_{k}": v for k, v in test_metrics.items()},
            "learning_rate": float(outputs.learning_rates[index]),
            "epoch_s": outputs.epoch_s, "eval_s": outputs.eval_s}
  return record, skipped, diverged


def write_member(group: _Group, index: int, record: dict[str, Any],
                 outputs: EpochOutputs, logger: tensorboard.TensorBoardLogger,
                 member_states) -> None:
  """Step 3: append the record to ``metrics.jsonl``, write TensorBoard
  events (when enabled) and, when ``member_states`` (host copies of the
  stacked state) is given, the member's checkpoint."""
  workdir, epoch = group.workdirs[index], record["epoch"]
  runs.append_metrics(workdir, [record])
  if logger.enabled:
    logger.scalars(epoch, record)
    logger.reconstructions(
        epoch, unstack(outputs.state.variables(), index),
        group.compiled.trainer.model, group.test_images[:8],
        rng.reconstruction_key(group.compiled.keys.eval[index], epoch))
  if member_states is not None:
    _save(group.ckpts[index], workdir, epoch, unstack(member_states, index),
          record["test_elbo"])


def _save(ckpt: checkpoint.Checkpoints, workdir: Path, epoch: int, state,
          test_elbo: float) -> None:
  """Checkpoint one member; a failed write names the path and what is kept."""
  try:
    ckpt.save(epoch, {"state": state, "epoch": np.int32(epoch)},
              metrics={"test_elbo": test_elbo})
  except (OSError, errors.CheckpointError) as e:
    kept = ckpt.latest_epoch()
    raise RunError(
        f"the checkpoint of epoch {epoch} could not be written to "
        f"{workdir / runs.CHECKPOINT_DIR}: {e}. "
        + (f"The checkpoint of epoch {kept} is kept; free space (or fix the "
           "directory) and re-run to resume from it." if kept else
           "No earlier checkpoint exists.")) from None


def _mark_diverged(workdir: Path, ckpt: checkpoint.Checkpoints, epoch: int,
                   nonfinite_steps: int, on_nan: str) -> dict[str, Any]:
  """Write ``diverged.json`` for a member whose loss became non-finite."""
  good = ckpt.latest_epoch()
  where = (f"the last good checkpoint is epoch {good} in "
           f"{workdir / runs.CHECKPOINT_DIR}" if good else
           "there is no good checkpoint")
  cause = (f"{nonfinite_steps} step(s) had a non-finite loss or update"
           if nonfinite_steps else "the test ELBO is not finite")
  advice = ("lower config.learning_rate, set config.grad_clip_norm, or set "
            "config.on_nan='skip' to skip non-finite updates"
            if on_nan == "stop" else "lower config.learning_rate or set "
            "config.grad_clip_norm")
  info = {"epoch": epoch, "nonfinite_steps": nonfinite_steps,
          "last_good_checkpoint": good,
          "message": f"diverged in epoch {epoch}: {cause}; {where}. "
                     f"Nothing was saved for epoch {epoch}; {advice}."}
  runs.write_json_atomic(workdir / runs.DIVERGED_FILE, info)
  return info


class LineProgress:
  """The progress bar when stderr is not a terminal (a cluster job, ``>
  log.txt``): one plain line every ``every`` epochs and at the last, e.g.
  ``quickstart: epoch 20/100 (1.21 s/epoch) test_elbo=-120.31 kl=24.80``,
  instead of carriage-return redraws."""

  def __init__(self, total: int, initial: int, desc: str, every: int,
               stream=None):
    self.total, self.n, self.desc, self.every = total, initial, desc, every
    self.stream = stream if stream is not None else sys.stderr
    self.postfix: dict[str, str] = {}
    self._t0, self._n0 = time.perf_counter(), initial

  def set_postfix(self, **values) -> None:
    self.postfix = {k: str(v) for k, v in values.items()}

  def update(self, n: int = 1) -> None:
    self.n += n
    if self.n % self.every and self.n != self.total:
      return
    rate = (time.perf_counter() - self._t0) / max(self.n - self._n0, 1)
    fields = "".join(f" {k}={v}" for k, v in self.postfix.items())
    print(f"{self.desc}: epoch {self.n}/{self.total} ({rate:.2f} s/epoch)"
          f"{fields}", file=self.stream, flush=True)

  def close(self) -> None:
    pass


def _progress_bar(enabled: bool | int, start: int, total: int, desc: str):
  """A tqdm bar on a terminal; :class:`LineProgress` otherwise, one line
  every ``enabled`` epochs (``True``: every epoch)."""
  if not enabled:
    return None
  if not sys.stderr.isatty():
    return LineProgress(total, start - 1, desc, max(int(enabled), 1))
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start - 1, desc=desc, unit="epoch")


def _run_epochs(group: _Group, state, resumed_from: int | None,
                hooks: Hooks) -> list[dict[str, Any]]:
  """The epoch loop of a group: train and evaluate, record each member,
  checkpoint, stop members that diverge or everything on request."""
  first, workdirs = group.configs[0], group.workdirs
  num_real = len(group.configs)
  start, total = (resumed_from or 0) + 1, first.num_epochs
  name = hooks.name or workdirs[0].name
  if start > total:
    hooks.log(f"{name}: run already finished ({start - 1} epochs; "
              f"num_epochs={total}); nothing to do.")
  elif resumed_from is not None:
    hooks.log(f"{name}: resuming from the checkpoint of epoch {resumed_from}.")
  bar = _progress_bar(hooks.show_progress if start <= total else False,
                     start, total,
                      name)
  last: list[dict[str, Any] | None] = [None] * num_real
  diverged: dict[int, dict[str, Any]] = {}
  # Each member's best test ELBO so far: an epoch that beats it is saved
  # too, so the best epoch always has a checkpoint (kept by BestN(1)).
  best_elbo = [max((r["test_elbo"] for r in runs.read_metrics(w)
                    if math.isfinite(r.get("test_elbo", math.nan))),
                   default=-math.inf) for w in workdirs]
  with contextlib.ExitStack() as loggers_stack:
    loggers = [loggers_stack.enter_context(tensorboard.TensorBoardLogger.create(
        w, purge_step=start)) for w in workdirs] if start <= total else []
    for epoch in range(start, total + 1):
      outputs = train_and_evaluate(group, state, epoch)
      state = outputs.state
      stop_reason = hooks.should_stop()
      save = (epoch % first.checkpoint_every_epochs == 0 or epoch == total
              or epoch in first.keep_epochs or stop_reason is not None)
      # Members that diverged earlier are not recorded again.
      records = [None if i in diverged else
                 member_record(outputs, i, group.configs[i], epoch)
                 for i in range(num_real)]
      new_best = [r is not None and not r[2]
                  and r[0]["test_elbo"] > best_elbo[i]
                  for i, r in enumerate(records)]
      member_states = (jax.device_get(state) if save or any(new_best)
                       else None)
      for i, workdir in enumerate(workdirs):
        if i in diverged:
          continue
        record, skipped, has_diverged = records[i]
        if has_diverged:
          diverged[i] = _mark_diverged(workdir, group.ckpts[i], epoch, skipped,
                                       group.configs[i].on_nan)
          if num_real > 1:  # a lone run raises Diverged with the message
            hooks.log(f"{workdir}: {diverged[i]['message']}")
          continue
        write_member(group, i, record, outputs, loggers[i],
                     member_states if save or new_best[i] else None)
        if new_best[i]:
          best_elbo[i] = record["test_elbo"]
        last[i] = record
      if bar is not None:
        if num_real == 1 and last[0] is not None:
          bar.set_postfix(test_elbo=f"{last[0]['test_elbo']:.2f}",
                          kl=f"{last[0]['test_kl']:.2f}")
        bar.update(1)
      if len(diverged) == num_real:
        break
      if stop_reason is not None and epoch < total:
        if bar is not None:
          bar.close()
        raise Interrupted(
            f"{name}: stopped by {stop_reason} after epoch {epoch}/{total}; "
            f"checkpoint saved. Run the same command again to resume.")
  if bar is not None:
    bar.close()
  if num_real == 1 and diverged:
    raise Diverged(f"{workdirs[0]}: {diverged[0]['message']}")
  return summaries(group, resumed_from, start > total, diverged)


def summaries(group: _Group, resumed_from: int | None,
              already_finished: bool, diverged: dict[int, dict[str, Any]]
              ) -> list[dict[str, Any]]:
  """Step 4: one summary per member (see :func:`fit`), from its directory."""
  result = []
  for i, (c, workdir) in enumerate(zip(group.ckpts, group.workdirs)):
    records = runs.read_metrics(workdir)
    result.append({"epoch": records[-1]["epoch"] if records else 0,
                   "best_epoch": c.best_epoch(),
                   "final": records[-1] if records else None,
                   "resumed_from": resumed_from,
                   "already_finished": already_finished,
                   "status": "diverged" if i in diverged else "finished",
                   "diverged": diverged.get(i)})
  return result
