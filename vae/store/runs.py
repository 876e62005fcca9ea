"""The run and sweep directories: every file name, and their atomic writes.

A run directory (``workdir``) holds::

  config.json      the resolved config (every field), written before training
  provenance.json  versions, platform, devices and git commit of the code
                   (vae.store.provenance)
  metrics.jsonl    one JSON object per epoch (timings in fields ending in _s)
  checkpoints/     orbax checkpoints (see vae.store.checkpoint)
  diverged.json    written when the run's loss became non-finite
  .lock            held (flock) by the process training in it
  eval.json        scripts/evaluate.py (eval_<stem>.json for --data <stem>)
  figures/         scripts/plot.py (FIGURE_FILES)
  tensorboard/     optional TensorBoard event files

A sweep directory holds one run directory per member, plus::

  sweep_config.json  the sweep's config
  sweep.csv, sweep.json, rate_distortion.png   the report
  figures/           scripts/plot.py (SWEEP_FIGURE_FILES)

Everything a later tool (resume, evaluate, plot) needs is read from here.
Saved configs are read back with the library's defaults for fields added
since (:func:`load_config`); this module knows nothing of models.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import ml_collections

from vae import config as config_lib
from vae import inputs
from vae.errors import RunError

CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
DIVERGED_FILE = "diverged.json"
LOCK_FILE = ".lock"
EVAL_FILE = "eval.json"
FIGURES_DIR = "figures"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_EXPORT_SUFFIX = ".export"  # event files written by an export
SWEEP_CONFIG_FILE = "sweep_config.json"
REPORT_CSV = "sweep.csv"
REPORT_JSON = "sweep.json"
RATE_DISTORTION_PNG = "rate_distortion.png"
# Figures of one run (in FIGURES_DIR), by figure.
FIGURE_FILES = {
    "reconstructions": "reconstructions.png",
    "prior_samples": "prior_samples.png",
    "latent_manifold": "latent_manifold.png",
    "latent_scatter": "latent_scatter.png",
    "traversals": "traversals.png",
    "neighbourhood": "neighbourhood.png",
    "training_curves": "training_curves.png",
    "kl_per_dim": "kl_per_dim.png",
}
# Figures of a sweep (in its FIGURES_DIR), by figure.
SWEEP_FIGURE_FILES = {
    "sweep_reconstructions": "sweep_reconstructions.png",
    "latent_scatter": "latent_scatter.png",
}

# Fields that may change when a run is resumed (extending training).
RESUMABLE_CHANGES = ("num_epochs", "eval_k")


def _write_json_synced(path: Path, obj: Any) -> None:
  """``obj`` as JSON in ``path``, flushed to disk."""
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())


def write_json_atomic(path: Path, obj: Any) -> None:
  """Write ``obj`` as JSON to ``path`` via a temporary file and a rename."""
  tmp = path.with_name(path.name + ".tmp")
  try:
    _write_json_synced(tmp, obj)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      tmp.unlink()  # a failed write leaves nothing behind
    raise


def write_json_once(path: Path, obj: Any) -> bool:
  """Create ``path`` holding ``obj`` as JSON unless it exists: of several
  processes racing, exactly one creates it (a hard link of a complete
  temporary file cannot be half-written or replaced). Returns whether this
  call created it."""
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  _write_json_synced(tmp, obj)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    tmp.unlink()


# Keys (and their JSON types) every saved run config has held since the
# first version of the library: a config.json without them is not a run's.
RUN_CONFIG_KEYS = {"dataset": str, "architecture": str, "latent_dim": int,
                   "num_epochs": int}
SWEEP_CONFIG_KEYS = {**RUN_CONFIG_KEYS, "sweep": dict}


def read_config_dict(workdir: str | os.PathLike, *,
                     name: str = CONFIG_FILE) -> dict[str, Any]:
  """The config saved in a run directory (``name``: CONFIG_FILE) or a sweep
  directory (SWEEP_CONFIG_FILE), as the JSON object it holds.

  Raises:
    RunError: ``workdir`` is missing or a file, or the file is missing,
      empty, truncated, not a JSON object or lacks RUN_CONFIG_KEYS (or
      SWEEP_CONFIG_KEYS); one line naming the path and what was expected.
  """
  sweep = name == SWEEP_CONFIG_FILE
  kind = "sweep" if sweep else "run"
  inputs.existing_dir(workdir, f"a {kind} directory (it holds {name})")
  keys = SWEEP_CONFIG_KEYS if sweep else RUN_CONFIG_KEYS
  return inputs.read_json_object(
      Path(workdir) / name,
      f"a {kind} directory's {name}: a JSON object of config fields with "
      f"{', '.join(repr(k) for k in keys)} (written by scripts/"
      f"{'sweep' if sweep else 'train'}.py)", keys)


def read_config(workdir: str | os.PathLike, defaults: Mapping[str, Any], *,
                name: str = CONFIG_FILE) -> ml_collections.ConfigDict:
  """The resolved config saved in a run directory (``name``: CONFIG_FILE,
  or SWEEP_CONFIG_FILE in a sweep directory); fields the library added
  after the run was made take their value from ``defaults``.

  Raises:
    RunError: see :func:`read_config_dict`.
  """
  d = dict(defaults)
  d.update(read_config_dict(workdir, name=name))  # newer fields: defaults
  for key, value in d.items():
    if isinstance(value, list):
      d[key] = tuple(value)
  return ml_collections.ConfigDict(d)


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The resolved config saved in a run directory; fields added to the
  library after the run was made take their defaults.

  Raises:
    RunError: ``workdir`` holds no ``config.json``.
  """
  return read_config(workdir, config_lib.default_config().to_dict())


def load_sweep_config(sweep_dir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The sweep config saved in a sweep directory (``sweep_config.json``),
  with defaults for fields added to the library since.

  Raises:
    RunError: ``sweep_dir`` holds no ``sweep_config.json``.
  """
  return read_config(sweep_dir, config_lib.default_config().to_dict(),
                     name=SWEEP_CONFIG_FILE)


def ensure_writable(workdir: str | os.PathLike) -> Path:
  """Create ``workdir`` if needed and check that files can be written in it;
  a run already there must have a readable ``config.json``. Nothing is left
  in it (the probe file is removed), so a refusal after this writes nothing.

  Raises:
    RunError: it is a file, it cannot be created or written, or its
      ``config.json`` is damaged (see :func:`read_config_dict`).
  """
  workdir = inputs.dir_or_absent(workdir,
                                 "a run directory (created if missing)")
  if (workdir / CONFIG_FILE).exists():
    read_config_dict(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write_test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise RunError(f"workdir {workdir} is not writable: {e}") from None
  return workdir


def check_resumable(workdir: str | os.PathLike, new: Mapping[str, Any],
                    defaults: Mapping[str, Any]) -> None:
  """Refuse to reuse ``workdir`` when its saved config differs from ``new``
  (both JSON-ready dicts) in a field other than RESUMABLE_CHANGES; fields the
  library added after the run was made count as ``defaults``.

  Raises:
    RunError: naming every changed field, old and new values.
  """
  if not (Path(workdir) / CONFIG_FILE).exists():
    return
  old = {**defaults, **read_config_dict(workdir)}
  changed = sorted(k for k in set(old) | set(new)
                   if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
  if changed:
    diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
    raise RunError(
        f"{workdir} holds a run with a different config ({diffs}). Resume it "
        f"with the same config (only {RESUMABLE_CHANGES} may change) or "
        f"choose a new --workdir.")


def eval_file_name(data_path: str | os.PathLike | None = None) -> str:
  """``eval.json`` for the run's own test set, ``eval_<stem>.json`` for a file.

  The stem is the file name without ``.gz``, ``.npy``, ``.npz`` or ``.idx``,
  with characters other than letters, digits, ``.``, ``_`` and ``-`` replaced
  by ``_``: ``t10k-images-idx3-ubyte.gz`` -> ``eval_t10k-images-idx3-ubyte.json``.
  """
  if data_path is None:
    return EVAL_FILE
  stem = Path(data_path).name
  for suffix in (".gz", ".npy", ".npz", ".idx"):
    stem = stem.removesuffix(suffix)
  return f"eval_{re.sub(r'[^A-Za-z0-9._-]', '_', stem) or 'data'}.json"


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of ``metrics.jsonl`` (an empty list if there is none)."""
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break  # a line cut short by a crash: everything after it is dropped
  return records


def epochs_recorded(workdir: str | os.PathLike) -> int:
  """The last epoch in ``metrics.jsonl`` (0 for a new run)."""
  return max((int(r["epoch"]) for r in read_metrics(workdir)), default=0)


def truncate_metrics(workdir: str | os.PathLike, last_epoch: int) -> None:
  """Keep only records with ``epoch <= last_epoch`` (used when resuming)."""
  kept = [r for r in read_metrics(workdir) if r["epoch"] <= last_epoch]
  path = Path(workdir) / METRICS_FILE
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def append_metrics(workdir: str | os.PathLike,
                   records: Iterable[dict[str, Any]]) -> None:
  """Append records to ``metrics.jsonl``, flushed to disk before returning."""
  with open(Path(workdir) / METRICS_FILE, "a") as f:
    f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
    f.flush()
    os.fsync(f.fileno())


class WorkdirLock:
  """An exclusive lock on a run directory, held while a process trains in it.

  Uses ``fcntl.flock`` on ``<workdir>/.lock``: the kernel releases it when
  the holder dies, however it dies, so a stale lock (from a killed process)
  is simply taken over. A live holder makes :meth:`acquire` raise
  :class:`RunError` naming its pid.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = Path(workdir) / LOCK_FILE
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    import fcntl
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise RunError(
          f"{self.path.parent} is in use by another run (pid {holder}); wait "
          "for it to finish, stop it, or choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      import fcntl
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def parse_checkpoint(which: str | int) -> str | int:
  """``'best'``, ``'latest'`` or an epoch number (also as a digit string)."""
  if isinstance(which, str) and which.strip().isdigit():
    return int(which)
  if which in ("best", "latest") or (isinstance(which, int)
                                     and not isinstance(which, bool)):
    return which
  raise RunError(f"checkpoint {which!r} is not accepted: 'best', "
                 "'latest' or an epoch number")


def member_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
  """The member runs of a sweep directory: its subdirectories holding
  ``config.json``, sorted by name."""
  sweep_dir = inputs.existing_dir(
      sweep_dir, "a sweep directory (whose subdirectories are runs)")
  return sorted(p for p in sweep_dir.iterdir()
                if p.is_dir() and (p / CONFIG_FILE).is_file())


def find_runs(path: str | Path) -> tuple[bool, list[Path]]:
  """``(is_sweep, run directories)`` of a run or a sweep directory.

  A run directory holds ``config.json``. A sweep directory is not a run but
  its immediate subdirectories that hold ``config.json`` are (its members,
  sorted by name; other subdirectories are ignored).

  Raises:
    RunError: ``path`` is neither.
  """
  path = Path(path)
  if (path / CONFIG_FILE).is_file():
    return False, [path]
  inputs.existing_dir(path, f"a run directory (holds {CONFIG_FILE}) or a "
                      "sweep directory (whose subdirectories are runs)")
  members = member_dirs(path)
  if not members:
    raise RunError(f"{path} is neither a run directory (no "
                   f"{CONFIG_FILE}) nor a sweep directory (none of "
                   f"its subdirectories holds {CONFIG_FILE})")
  return True, members
