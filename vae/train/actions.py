"""The actions of the run loop: each a small object called every epoch that
acts when its schedule says so, in the spirit of CLU's periodic actions.

:func:`vae.train.loop` reads top to bottom as the compiled program plus
these, for every member of a group at once::

  for epoch in range(start, total + 1):
    state, trained = program(state, epoch)        # one compiled epoch
    tested = evaluate(state)                       # Evaluate: the test ELBO
    stop = should_stop()
    records = record(epoch, trained, tested)       # Record: metrics.jsonl, TensorBoard
    checkpoint(epoch, state, records, stop)        # Checkpoint: on its schedule
    progress(records)                              # ReportProgress
    if record.all_diverged or (stop and epoch < total): ...

:class:`Schedule` says when an action acts. Evaluate and Record act every
epoch (``metrics.jsonl`` has one record per epoch); Checkpoint every
``checkpoint_every_epochs``, at the last epoch, at ``keep_epochs``, on a
new best test ELBO and when asked to stop; ReportProgress every
``--log_every`` epochs when stderr is not a terminal (else a bar).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from vae import errors, rng
from vae.errors import RunError
from vae.evals.evaluator import elbo_metrics
from vae.store import checkpoint, runs
from vae.train.objectives import epoch_metrics
from vae.train.state import unstack
from vae.viz import tensorboard


class Schedule(NamedTuple):
  """When an action acts: every ``every`` epochs, at each of ``epochs``,
  and at the ``last`` epoch (0: none)."""

  every: int = 1
  epochs: tuple[int, ...] = ()
  last: int = 0

  def __call__(self, epoch: int) -> bool:
    return (epoch % self.every == 0 or epoch in self.epochs
            or epoch == self.last)


class Trained(NamedTuple):
  """One compiled epoch of every member, read back to the host.

  Attributes:
    state: the group's new (stacked, device-resident) state.
    terms: the scanned epoch's per-step terms, ``[M, steps, ...]``
      (:func:`vae.train.step.train_epoch`).
    learning_rates: ``[M]`` the learning rate each member last used.
    seconds: wall seconds of the epoch (``epoch_s``).
  """

  state: Any
  terms: dict[str, np.ndarray]
  learning_rates: np.ndarray
  seconds: float


class Tested(NamedTuple):
  """The evaluator's test ELBO terms of every member.

  Attributes:
    log_likelihood: ``[M, N]`` log p(x | z) of the test set.
    kl_per_dim: ``[M, N, latent_dim]``.
    seconds: wall seconds of the evaluation (``eval_s``).
  """

  log_likelihood: np.ndarray
  kl_per_dim: np.ndarray
  seconds: float


class Record(NamedTuple):
  """One member's epoch: its ``metrics.jsonl`` record, its count of
  non-finite steps, and whether it diverged."""

  metrics: dict[str, Any]
  skipped: int
  diverged: bool


class Evaluate:
  """The test set's one-sample ELBO terms of every member, each epoch: the
  evaluator's :func:`vae.evals.evaluator.member_elbo_terms`, compiled into
  the group's program (``evaluation_terms``), with each member's evaluation
  key (the same draws every epoch)."""

  def __init__(self, evaluation_terms, test_images, eval_keys):
    self.evaluation_terms = evaluation_terms
    self.test_images, self.eval_keys = test_images, eval_keys

  def __call__(self, state) -> Tested:
    t0 = time.perf_counter()
    log_lik, kl = jax.device_get(self.evaluation_terms(
        state.variables(), self.test_images, self.eval_keys))
    return Tested(log_lik, kl, time.perf_counter() - t0)


def member_record(trained: Trained, tested: Tested, index: int,
                  config: ml_collections.ConfigDict, epoch: int) -> Record:
  """Member ``index``'s ``metrics.jsonl`` record of this epoch (float64 host
  reductions, nats per example: the training terms by
  :func:`vae.train.objectives.epoch_metrics`, the test set's by the
  evaluator's :func:`vae.evals.evaluator.elbo_metrics`), its count of
  non-finite steps, and whether it diverged (a non-finite step with
  ``on_nan="stop"``, or a non-finite test ELBO)."""
  num_data_dims = math.prod(config.data_shape)
  train_metrics = epoch_metrics(
      {k: v[index] for k, v in trained.terms.items()}, config.free_bits,
      num_data_dims, loss_is_negative_bound=config.objective == "iwae")
  test_metrics = elbo_metrics(tested.log_likelihood[index],
                              tested.kl_per_dim[index], config.beta,
                              num_data_dims)
  skipped = train_metrics.pop("nonfinite_steps")
  diverged = bool((skipped and config.on_nan == "stop")
                  or not math.isfinite(test_metrics["elbo"]))
  record = {"epoch": epoch,
            **{f"train_{k}": v for k, v in train_metrics.items()},
            "train_skipped_steps": skipped,
            **{f"test_{k}": v for k, v in test_metrics.items()},
            "learning_rate": float(trained.learning_rates[index]),
            "epoch_s": trained.seconds, "eval_s": tested.seconds}
  return Record(record, skipped, diverged)


class RecordMetrics:
  """Each epoch: every member's record (:func:`member_record`) appended to
  its ``metrics.jsonl`` and written as TensorBoard events (scalars and a
  reconstruction image, when tensorboardX is installed). A member that
  diverges gets ``diverged.json`` instead and is not recorded again.

  Attributes:
    diverged: member index -> what ``diverged.json`` says.
    last: each member's last record (None before its first).
  """

  def __init__(self, configs: Sequence[ml_collections.ConfigDict],
               workdirs: Sequence[Path],
               ckpts: Sequence[checkpoint.Checkpoints],
               loggers: Sequence[tensorboard.TensorBoardLogger], model,
               test_images, eval_keys, log: Callable[[str], None]):
    self.configs, self.workdirs, self.ckpts = configs, workdirs, ckpts
    self.loggers, self.model = loggers, model
    self.test_images, self.eval_keys, self.log = test_images, eval_keys, log
    self.diverged: dict[int, dict[str, Any]] = {}
    self.last: list[dict[str, Any] | None] = [None] * len(configs)

  @property
  def all_diverged(self) -> bool:
    return len(self.diverged) == len(self.configs)

  def __call__(self, epoch: int, trained: Trained, tested: Tested
               ) -> list[Record | None]:
    """The records of this epoch (None for members that diverged before)."""
    records = [None if i in self.diverged else
               member_record(trained, tested, i, self.configs[i], epoch)
               for i in range(len(self.configs))]
    for i, r in enumerate(records):
      if r is None:
        continue
      if r.diverged:
        self.diverged[i] = mark_diverged(self.workdirs[i], self.ckpts[i],
                                         epoch, r.skipped,
                                         self.configs[i].on_nan)
        if len(self.configs) > 1:  # a lone run raises Diverged with it
          self.log(f"{self.workdirs[i]}: {self.diverged[i]['message']}")
        continue
      runs.append_metrics(self.workdirs[i], [r.metrics])
      logger = self.loggers[i]
      if logger.enabled:
        logger.scalars(epoch, r.metrics)
        logger.reconstructions(
            epoch, unstack(trained.state.variables(), i), self.model,
            self.test_images[:8], rng.reconstruction_key(self.eval_keys[i],
                                                         epoch))
      self.last[i] = r.metrics
    return records


class Checkpoint:
  """Saves a member's state on its schedule, when its test ELBO beats its
  best so far (so the summary's best epoch always has a checkpoint, kept by
  ``BestN(1)``), and when the loop is asked to stop; never for a member
  that diverged this epoch. The stacked state is read back to the host
  once, only on epochs that save something."""

  def __init__(self, ckpts: Sequence[checkpoint.Checkpoints],
               workdirs: Sequence[Path], schedule: Schedule):
    self.ckpts, self.workdirs, self.schedule = ckpts, workdirs, schedule
    # Each member's best test ELBO so far (from metrics.jsonl on resume).
    self.best_elbo = [max((r["test_elbo"] for r in runs.read_metrics(w)
                           if math.isfinite(r.get("test_elbo", math.nan))),
                          default=-math.inf) for w in workdirs]

  def __call__(self, epoch: int, state, records: Sequence[Record | None],
               stop_reason: str | None) -> None:
    due = self.schedule(epoch) or stop_reason is not None
    new_best = [r is not None and not r.diverged
                and r.metrics["test_elbo"] > self.best_elbo[i]
                for i, r in enumerate(records)]
    if not (due or any(new_best)):
      return
    host = jax.device_get(state)
    for i, r in enumerate(records):
      if r is None or r.diverged:
        continue
      if due or new_best[i]:
        save(self.ckpts[i], self.workdirs[i], epoch, unstack(host, i),
             r.metrics["test_elbo"])
      if new_best[i]:
        self.best_elbo[i] = r.metrics["test_elbo"]


def save(ckpt: checkpoint.Checkpoints, workdir: Path, epoch: int, state,
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


def mark_diverged(workdir: Path, ckpt: checkpoint.Checkpoints, epoch: int,
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


class ReportProgress:
  """Each epoch: a tqdm bar on a terminal; elsewhere :class:`LineProgress`,
  one line every ``every`` epochs (``show`` True: every epoch; False or 0:
  nothing). A lone run's line carries its test ELBO and KL."""

  def __init__(self, show: bool | int, start: int, total: int, desc: str):
    self.bar = None
    if show:
      if sys.stderr.isatty():
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, initial=start - 1, desc=desc,
                        unit="epoch")
      else:
        self.bar = LineProgress(total, start - 1, desc, max(int(show), 1))

  def __call__(self, last: Sequence[dict[str, Any] | None]) -> None:
    if self.bar is None:
      return
    if len(last) == 1 and last[0] is not None:
      self.bar.set_postfix(test_elbo=f"{last[0]['test_elbo']:.2f}",
                           kl=f"{last[0]['test_kl']:.2f}")
    self.bar.update(1)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
