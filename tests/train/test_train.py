"""Training: reproducibility to the bit, resume, learning, bad config values."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from vae.store import restore, runs
from vae.train import loop as train
from vae import config as config_lib

REPO = Path(__file__).resolve().parents[2]


def tiny_config(**overrides):
  return config_lib.with_fields(**{"hidden_sizes": (64,), "latent_dim": 4,
                                   "batch_size": 100, "num_epochs": 3, **overrides})


def _final_params(workdir):
  run = restore.load_run(workdir, "latest")
  return run.epoch, jax.tree_util.tree_leaves(jax.device_get(run.params))


def _without_timings(records):
  return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]


def test_same_config_and_seed_give_bitwise_identical_runs(tmp_path):
  config = tiny_config()
  a = train.fit(config, tmp_path / "a", progress=False, log=lambda s: None)
  b = train.fit(config, tmp_path / "b", progress=False, log=lambda s: None)
  ra, rb = runs.read_metrics(tmp_path / "a"), runs.read_metrics(tmp_path / "b")
  assert len(ra) == 3 and _without_timings(ra) == _without_timings(rb)
  assert a["best_epoch"] == b["best_epoch"]
  ea, pa = _final_params(tmp_path / "a")
  eb, pb = _final_params(tmp_path / "b")
  assert ea == eb == 3
  for x, y in zip(pa, pb, strict=True):
    np.testing.assert_array_equal(x, y)
  assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()
  # Another seed gives other numbers.
  train.fit(tiny_config(seed=1), tmp_path / "c", progress=False, log=lambda s: None)
  assert _without_timings(runs.read_metrics(tmp_path / "c")) != _without_timings(ra)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  # 2 epochs, then the same run extended to 5 (resuming at epoch 3), against 5 straight.
  train.fit(tiny_config(num_epochs=2), tmp_path / "r", progress=False, log=lambda s: None)
  summary = train.fit(tiny_config(num_epochs=5), tmp_path / "r", progress=False,
                      log=lambda s: None)
  assert summary["resumed_from"] == 2
  train.fit(tiny_config(num_epochs=5), tmp_path / "u", progress=False, log=lambda s: None)
  assert _without_timings(runs.read_metrics(tmp_path / "r")) == _without_timings(
      runs.read_metrics(tmp_path / "u"))
  for x, y in zip(_final_params(tmp_path / "r")[1], _final_params(tmp_path / "u")[1],
                  strict=True):
    np.testing.assert_array_equal(x, y)
  # A finished run says so and changes nothing.
  messages = []
  summary = train.fit(tiny_config(num_epochs=5), tmp_path / "u", progress=False,
                      log=messages.append)
  assert summary["already_finished"] and "already finished" in messages[0]


# A real SIGKILL (and SIGTERM) mid-run followed by a bitwise resume is in
# tests/test_faults.py.


def test_short_training_on_mnist_5k_learns(tmp_path):
  config = tiny_config(hidden_sizes=(256,), latent_dim=10, batch_size=64, num_epochs=8)
  train.fit(config, tmp_path, progress=False, log=lambda s: None)
  records = runs.read_metrics(tmp_path)
  first, last = records[0], records[-1]
  # Measured: epoch 1 test -ELBO ~ 205 nats, epoch 8 ~ 128. A model that learned
  # nothing stays at ~ 540 (uniform pixels) or ~ 205 (mean image).
  assert -last["test_elbo"] < 135.0
  assert -last["test_elbo"] < -first["test_elbo"] - 40
  assert last["test_kl"] > 5.0  # the posterior carries information (no collapse)


def test_dynamic_binarization_redraws_pixels(tmp_path):
  config = tiny_config(binarize="dynamic", num_epochs=2)
  train.fit(config, tmp_path, progress=False, log=lambda s: None)
  records = runs.read_metrics(tmp_path)
  assert len(records) == 2 and all(np.isfinite(r["test_elbo"]) for r in records)


@pytest.mark.parametrize("field,value,fragment", [
    ("beta", -1.0, "config.beta=-1.0"),
    ("latent_dim", 0, "config.latent_dim=0"),
    ("dataset", "cifar", "config.dataset='cifar'"),
    ("likelihood", "poisson", "config.likelihood='poisson'"),
    ("batch_size", 0, "config.batch_size=0"),
    ("hidden_sizes", (0,), "config.hidden_sizes=(0,)"),
    ("learning_rate", 0.0, "config.learning_rate=0.0"),
    ("lr_schedule", "cyclic", "config.lr_schedule='cyclic'"),
])
def test_bad_config_values_name_the_field(tmp_path, field, value, fragment):
  config = tiny_config()
  config[field] = value
  with pytest.raises(config_lib.ConfigError) as excinfo:
    train.fit(config, tmp_path, progress=False, log=lambda s: None)
  assert fragment in str(excinfo.value) and "accepted" in str(excinfo.value)
  assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_reports_user_errors_without_traceback(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  out = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "train.py"), "--config",
       str(REPO / "experiments" / "quickstart.py"), "--config.likelihood=poisson",
       "--workdir", str(tmp_path)], env=env, capture_output=True, text=True)
  assert out.returncode == 2
  assert "config.likelihood='poisson'" in out.stderr and "Traceback" not in out.stderr


def test_resuming_with_a_different_config_is_refused(tmp_path):
  train.fit(tiny_config(num_epochs=1), tmp_path, progress=False, log=lambda s: None)
  with pytest.raises(runs.RunError, match="latent_dim: 4 -> 8"):
    train.fit(tiny_config(num_epochs=2, latent_dim=8), tmp_path, progress=False,
              log=lambda s: None)


def test_training_on_a_tfds_dataset_under_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    train.fit(tiny_config(dataset="mnist", batch_size=32, num_epochs=2,
                          eval_batch_size=50), tmp_path, progress=False,
              log=lambda s: None)
  records = runs.read_metrics(tmp_path)
  assert [r["epoch"] for r in records] == [1, 2]
  assert all(np.isfinite(r["test_elbo"]) for r in records)
  assert runs.load_config(tmp_path).dataset == "mnist"
