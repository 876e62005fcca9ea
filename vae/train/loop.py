"""The run loop: train (or resume) one run, or a group of sweep members, in
their run directories.

:func:`fit` trains one run; :func:`fit_members` trains runs that differ only in
traced fields as one compiled program (a run is a group of one). The loop,
:func:`_run_epochs`, reads top to bottom as the program (:func:`train_epoch`:
one compiled epoch of every member) plus its actions
(:mod:`vae.train.actions`): evaluate the test set, record ``metrics.jsonl``
and TensorBoard, checkpoint, report progress; :func:`summaries` once it ends,
and :func:`summary_table` for a person to read.

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
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np

from vae import config as config_lib
from vae import numerics
from vae.data import preprocess
from vae.errors import ConfigError, Diverged, Interrupted
from vae.store import checkpoint, provenance, restore, runs
from vae.train import actions, optim
from vae.train import devices as devices_lib
from vae.train import program as trainer_lib
from vae.train.objectives import TRACED_FIELDS
from vae.train.state import stack, unstack
from vae.viz import tensorboard

__all__ = ["Hooks", "fit", "fit_members", "prepare_workdir", "summary_table"]


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
  numerics.check(configs[0].numerics)
  if len({trainer_lib.static_signature(c) for c in configs}) > 1:
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
  new = config_lib.config_to_dict(config)
  runs.check_resumable(workdir, new,
                       config_lib.config_to_dict(config_lib.default_config()))
  trained = runs.epochs_recorded(workdir)
  if trained > config.num_epochs:
    log(f"{workdir}: the run has {trained} epochs, more than num_epochs="
        f"{config.num_epochs}; its config.json is left as it is.")
    return workdir
  runs.write_json_atomic(workdir / runs.CONFIG_FILE, new)
  runs.write_json_atomic(workdir / runs.PROVENANCE_FILE, provenance.provenance())
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


def train_epoch(group: _Group, state, epoch: int) -> actions.Trained:
  """The program: one compiled epoch of every member
  (:func:`vae.train.step.train_epoch`, vmapped over the member axis),
  its per-step terms read back to the host."""
  compiled = group.compiled
  t0 = time.perf_counter()
  state, terms = compiled.trainer.train_epoch(
      state, group.train_images, epoch, compiled.keys.train, compiled.settings)
  terms = jax.device_get(terms)
  seconds = time.perf_counter() - t0
  return actions.Trained(
      state, terms, np.asarray(optim.current_learning_rate(state.opt_state)),
      seconds)


def _run_epochs(group: _Group, state, resumed_from: int | None,
                hooks: Hooks) -> list[dict[str, Any]]:
  """The epoch loop of a group: the program, then its actions (see
  :mod:`vae.train.actions`); members that diverge stop alone, every member
  stops (checkpointed) on request."""
  first, workdirs, compiled = group.configs[0], group.workdirs, group.compiled
  start, total = (resumed_from or 0) + 1, first.num_epochs
  name = hooks.name or workdirs[0].name
  if start > total:
    hooks.log(f"{name}: run already finished ({start - 1} epochs; "
              f"num_epochs={total}); nothing to do.")
  elif resumed_from is not None:
    hooks.log(f"{name}: resuming from the checkpoint of epoch {resumed_from}.")
  with contextlib.ExitStack() as loggers_stack:
    loggers = [loggers_stack.enter_context(tensorboard.TensorBoardLogger.create(
        w, purge_step=start)) for w in workdirs] if start <= total else []
    evaluate = actions.Evaluate(compiled.trainer.evaluation_terms,
                                group.test_images, compiled.keys.eval)
    record = actions.RecordMetrics(
        group.configs, workdirs, group.ckpts, loggers, compiled.trainer.model,
        group.test_images, compiled.keys.eval, hooks.log)
    checkpoint = actions.Checkpoint(group.ckpts, workdirs, actions.Schedule(
        first.checkpoint_every_epochs, tuple(first.keep_epochs), total))
    progress = actions.ReportProgress(
        hooks.show_progress if start <= total else False, start, total, name)
    for epoch in range(start, total + 1):
      trained = train_epoch(group, state, epoch)
      state = trained.state
      tested = evaluate(state)
      stop_reason = hooks.should_stop()
      records = record(epoch, trained, tested)
      checkpoint(epoch, state, records, stop_reason)
      progress(record.last)
      if record.all_diverged:
        break
      if stop_reason is not None and epoch < total:
        progress.close()
        raise Interrupted(
            f"{name}: stopped by {stop_reason} after epoch {epoch}/{total}; "
            f"checkpoint saved. Run the same command again to resume.")
  progress.close()
  if len(group.configs) == 1 and record.diverged:
    raise Diverged(f"{workdirs[0]}: {record.diverged[0]['message']}")
  return summaries(group, resumed_from, start > total, record.diverged)


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


def summary_table(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
  """A plain-text table of the final (and best) epoch, in nats per example."""
  cols = ("loss", "recon", "kl", "elbo", "bits_per_dim")
  lines = [f"{'':>18}" + "".join(f"{c:>14}" for c in cols)]
  final = summary["final"]
  rows = [(f"train (epoch {final['epoch']})", "train", final),
          (f"test (epoch {final['epoch']})", "test", final)]
  best = summary.get("best_epoch")
  by_epoch = {r["epoch"]: r for r in records}
  if best is not None and best != final["epoch"] and best in by_epoch:
    rows.append((f"test (best, {best})", "test", by_epoch[best]))
  for label, split, rec in rows:
    lines.append(f"{label:>18}" + "".join(
        f"{rec[f'{split}_{c}']:>14.4f}" for c in cols))
  total = sum(r.get("epoch_s", 0.0) + r.get("eval_s", 0.0) for r in records)
  lines.append(f"nats per example; {len(records)} epochs, "
               f"{total:.1f} s of training and evaluation in metrics.jsonl")
  return "\n".join(lines)
