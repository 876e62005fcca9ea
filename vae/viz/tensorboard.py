"""Optional TensorBoard event files: per-epoch scalars and reconstructions.

``metrics.jsonl`` stays the source of truth; event files are a view of it for
TensorBoard, written through tensorboardX when it is installed (the
``tensorboard`` extra) and skipped otherwise: :meth:`TensorBoardLogger.create`
then returns a logger whose methods do nothing (with a one-time info note),
so callers never branch on it. Nothing here is needed by the default install.

In the training loop::

  logger = tensorboard.TensorBoardLogger.create(workdir, purge_step=start)
  ...
  logger.scalars(epoch, record)                         # the metrics record
  logger.reconstructions(epoch, params, model, images, key)
  logger.close()

or afterwards, from a finished run directory: :func:`export_run` (what
``scripts/plot.py --tensorboard`` calls, for a run or every sweep member).
Files land in ``<workdir>/tensorboard/``; view them with
``tensorboard --logdir <workdir or sweep dir>``.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vae.viz import images as images_lib
from vae.data import preprocess
from vae.store import restore, runs
from vae import rng

TENSORBOARD_DIR = runs.TENSORBOARD_DIR
EXPORT_SUFFIX = runs.TENSORBOARD_EXPORT_SUFFIX  # event files written by export_run

_noted = False


def available() -> bool:
  """Whether tensorboardX can be imported."""
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    return False
  return True


def _note_missing(log: Callable[[str], None] | None) -> None:
  global _noted
  if _noted:
    return
  _noted = True
  message = ("TensorBoard event files are not written: tensorboardX is not "
             "installed (pip install 'vae[tensorboard]'); metrics.jsonl has "
             "every value.")
  if log is not None:
    log(message)
  else:
    from absl import logging
    logging.info(message)


def scalar_tags(record: Mapping[str, Any]) -> dict[str, float]:
  """TensorBoard tags of a ``metrics.jsonl`` record.

  ``train_<m>`` -> ``train/<m>``, ``test_<m>`` -> ``test/<m>``, timings
  (keys ending in ``_s``) -> ``time/<key>``, any other number -> ``<key>``
  (e.g. ``learning_rate``). ``epoch`` (the step) and non-numbers are left out.
  """
  tags = {}
  for key, value in record.items():
    if key == "epoch" or isinstance(value, bool):
      continue
    if not isinstance(value, numbers.Real):
      continue
    if key.endswith("_s"):
      tag = f"time/{key}"
    elif key.startswith(("train_", "test_")):
      split, _, name = key.partition("_")
      tag = f"{split}/{name}"
    else:
      tag = key
    tags[tag] = float(value)
  return tags


def check_image(image) -> tuple[np.ndarray, str]:
  """An image as float32 with its tensorboardX ``dataformats``.

  Args:
    image: ``[H, W]`` or ``[H, W, C]`` (C = 1, 3 or 4), values in [0, 1].

  Raises:
    ValueError: another shape, or values outside [0, 1] (or NaN).
  """
  image = np.asarray(image, np.float32)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
    raise ValueError(f"image of shape {image.shape} is not accepted: [H, W] "
                     "or [H, W, C] with C in (1, 3, 4)")
  if image.size and not (np.all(image >= 0.0) and np.all(image <= 1.0)):
    raise ValueError(
        f"image values in [{np.nanmin(image):g}, {np.nanmax(image):g}] (NaN: "
        f"{bool(np.isnan(image).any())}) are not accepted: probabilities or "
        "likelihood means in [0, 1] (clip Gaussian means first)")
  return image, "HW" if image.ndim == 2 else "HWC"


class TensorBoardLogger:
  """Writes scalars and images of one run into ``<workdir>/tensorboard/``.

  Build it with :meth:`create`; when tensorboardX is missing every method is
  a no-op and :attr:`enabled` is False. Usable as a context manager.
  """

  def __init__(self, writer=None, logdir: Path | None = None):
    self._writer = writer
    self.logdir = logdir

  @classmethod
  def create(cls, workdir, *, purge_step: int | None = None,
             filename_suffix: str = "",
             log: Callable[[str], None] | None = None) -> "TensorBoardLogger":
    """A logger for the run in ``workdir`` (a no-op one without tensorboardX).

    Args:
      workdir: the run directory; events go to ``workdir/tensorboard``.
      purge_step: on resume, the first epoch trained now: TensorBoard drops
        the earlier files' events from this step on (no doubled curves).
      filename_suffix: appended to the event file's name.
      log: where the one-time note about a missing tensorboardX goes
        (default: absl INFO).
    """
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      _note_missing(log)
      return cls()
    logdir = Path(workdir) / TENSORBOARD_DIR
    logdir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(logdir=str(logdir), purge_step=purge_step,
                           filename_suffix=filename_suffix, flush_secs=30)
    return cls(writer, logdir)

  @property
  def enabled(self) -> bool:
    """Whether events are written."""
    return self._writer is not None

  def scalars(self, epoch: int, record: Mapping[str, Any]) -> None:
    """Every number of a ``metrics.jsonl`` record at step ``epoch`` (tags:
    :func:`scalar_tags`; non-finite values are written as they are)."""
    if self._writer is None:
      return
    for tag, value in scalar_tags(record).items():
      self._writer.add_scalar(tag, value, int(epoch))

  def image(self, epoch: int, name: str, image) -> None:
    """One image at step ``epoch``.

    Args:
      epoch: the step.
      name: the tag, e.g. ``"reconstructions"``.
      image: ``[H, W]`` or ``[H, W, C]`` float in [0, 1] (see
        :func:`check_image`; checked even when the logger is a no-op).
    """
    image, formats = check_image(image)
    if self._writer is None:
      return
    self._writer.add_image(name, image, int(epoch), dataformats=formats)

  def reconstructions(self, epoch: int, params, model, images, key, *,
                      name: str = "reconstructions", cols: int = 10
                      ) -> np.ndarray | None:
    """The reconstruction image: per set of ``cols`` images, rows of
    originals, ``reconstruct(params, x)`` and ``reconstruct(params, x, key)``
    (likelihood means clipped to [0, 1]); returns it (None when disabled)."""
    if self._writer is None:
      return None
    grid = images_lib.reconstruction_grid(
        images_lib.reconstruction_rows(params, model, images, key), cols)
    self.image(epoch, name, grid)
    return grid

  def text(self, epoch: int, name: str, text: str) -> None:
    """A text note (e.g. what the image rows are) at step ``epoch``."""
    if self._writer is not None:
      self._writer.add_text(name, text, int(epoch))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> "TensorBoardLogger":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


RECONSTRUCTION_NOTE = (
    "Per set of images, rows: originals x; deterministic path "
    "reconstruct(params, x) (z = posterior mean); stochastic path "
    "reconstruct(params, x, key) (z ~ q(z|x)). Likelihood means (for "
    "Bernoulli: pixel probabilities), never logits.")


def export_run(workdir, *, seed: int = 0, which: str | int = "best",
               num_images: int = 20,
               log: Callable[[str], None] | None = None) -> Path | None:
  """Write a finished run's TensorBoard view from its directory.

  Every record of ``metrics.jsonl`` as scalars at its epoch, and the
  reconstruction image of checkpoint ``which`` at its epoch (test images and
  key as :func:`vae.viz.figures.plot_run` draws them for ``seed``). Event files of
  an earlier export (names ending in ``.export``) are replaced; files a
  training-time logger wrote are left alone.

  Returns:
    The event directory, or None when tensorboardX is not installed.
  """
  if not available():
    _note_missing(log)
    return None
  workdir = Path(workdir)
  run = restore.load_run(workdir, which)
  logdir = workdir / TENSORBOARD_DIR
  for old in sorted(logdir.glob(f"events.out.tfevents.*{EXPORT_SUFFIX}")):
    old.unlink()
  test = preprocess.load_test_set(run.config)
  keys = rng.figure_keys(seed)
  order = images_lib.pick_indices(keys.pick, test.images.shape[0], num_images)
  with TensorBoardLogger.create(workdir, filename_suffix=EXPORT_SUFFIX,
                                log=log) as logger:
    for record in runs.read_metrics(workdir):
      logger.scalars(record["epoch"], record)
    logger.reconstructions(
        run.epoch, run.params, run.model, test.images[order], keys.recon)
    logger.text(run.epoch, "reconstructions/about", RECONSTRUCTION_NOTE)
  return logdir


def read_events(path) -> list[Any]:
  """The ``Event`` protos of one event file (for tests and checks; needs
  tensorboardX). Reads the TFRecord framing directly: 8-byte length, 4-byte
  length CRC, payload, 4-byte payload CRC (CRCs not verified)."""
  import struct

  from tensorboardX.proto import event_pb2
  data = Path(path).read_bytes()
  events, pos = [], 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    payload = data[pos + 12:pos + 12 + length]
    if len(payload) < length:
      break  # a record cut short
    events.append(event_pb2.Event.FromString(payload))
    pos += 12 + length + 4
  return events
