"""Every experiment file runs (its quick variant) and is what it says it is."""

import importlib.util
from pathlib import Path

import pytest

from vae.sweep import grouping, runner as sweep
from vae.train import optim, loop as train
from vae.store import restore, runs

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load(name, variant=None):
  spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def test_required_set_ups():
  keras = load("keras_mlp")
  assert (keras.hidden_sizes, keras.latent_dim, keras.batch_size, keras.num_epochs) == (
      (512,), 32, 128, 50)
  blog = load("keras_blog_latent2")
  assert (blog.hidden_sizes, blog.latent_dim, blog.beta, blog.batch_size, blog.num_epochs) == (
      (64,), 2, 2.0, 32, 20)
  deep = load("deep_batchnorm")
  assert deep.hidden_sizes == (512, 512, 512) and deep.batch_norm and deep.latent_dim == 2
  kl = load("kl_weight_sweep")
  names = [n for n, _ in grouping.members(kl)]
  assert names == ["autoencoder", "beta0.5", "beta1", "beta5", "BROKEN_mean_pixels_demo"]
  assert kl.hidden_sizes == () and kl.decoder_output_activation == "tanh"
  assert kl.likelihood == "gaussian" and kl.latent_dim == 30
  logits = load("logits_vs_sigmoid")
  assert (logits.hidden_sizes, logits.latent_dim, logits.learning_rate, logits.batch_size) == (
      (256,), 5, 1e-4, 100)
  iwae = load("iwae_paper")
  assert (iwae.hidden_sizes, iwae.activation, iwae.latent_dim, iwae.batch_size) == (
      (200, 200), "tanh", 50, 20)
  assert iwae.binarize == "dynamic" and iwae.num_epochs == 3280 == sum(3**i for i in range(8))
  assert "86.76" in (EXPERIMENTS / "iwae_paper.py").read_text()


def test_iwae_schedule_stages():
  assert optim.iwae_stage_boundaries(3280) == [1, 4, 13, 40, 121, 364, 1093]
  config = load("iwae_paper")
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
  for epoch, stage in [(1, 0), (2, 1), (4, 1), (5, 2), (1094, 7), (3280, 7)]:
    lr = float(schedule((epoch - 1) * 10))
    assert lr == pytest.approx(1e-3 * 10 ** (-stage / 7), rel=1e-5), (epoch, stage)


@pytest.mark.parametrize("name", ["keras_mlp", "keras_blog_latent2", "deep_batchnorm",
                                  "iwae_paper"])
def test_quick_variant_of_each_run_experiment_trains(tmp_path, name):
  config = load(name, "quick")
  summary = train.fit(config, tmp_path, progress=False, log=lambda s: None)
  records = runs.read_metrics(tmp_path)
  assert len(records) == config.num_epochs and summary["status"] == "finished"
  assert records[-1]["test_elbo"] < 0 and records[-1]["test_elbo"] > -600


# kl_weight_sweep in the slow suite: the same sweep code as logits_vs_sigmoid.
@pytest.mark.parametrize("name", [
    pytest.param("kl_weight_sweep", marks=pytest.mark.slow), "logits_vs_sigmoid"])
def test_quick_variant_of_each_sweep_experiment_trains(tmp_path, name):
  rows = sweep.run_sweep(load(name, "quick"), tmp_path, progress=False, log=lambda s: None)
  assert all(r["status"] == "finished" for r in rows)


def test_batch_stats_are_threaded_and_used_in_evaluation(tmp_path):
  config = load("deep_batchnorm", "quick")
  train.fit(config, tmp_path, progress=False, log=lambda s: None)
  run = restore.load_run(tmp_path, "latest")
  assert set(run.params) == {"params", "batch_stats"}
  stats = run.params["batch_stats"]["encoder"]["BatchNorm_0"]
  assert float(abs(stats["mean"]).sum()) > 0  # running averages moved from zero


def test_iwae_table1_cells_and_short_schedule():
  cells = {v: load("iwae_table1", v) for v in
           ("vae1", "vae5", "vae50", "iwae5", "iwae50")}
  assert {v: (c.objective, c.num_samples) for v, c in cells.items()} == {
      "vae1": ("vae", 1), "vae5": ("vae", 5), "vae50": ("vae", 50),
      "iwae5": ("iwae", 5), "iwae50": ("iwae", 50)}
  for c in cells.values():  # the paper's protocol, full MNIST
    assert (c.hidden_sizes, c.activation, c.latent_dim, c.batch_size,
            c.adam_eps, c.lr_schedule, c.binarize, c.num_epochs,
            c.dataset) == ((200, 200), "tanh", 50, 20, 1e-4, "iwae",
                           "dynamic", 3280, "mnist")
    assert c.keep_epochs == (1, 4, 13, 40, 121, 364, 1093, 3280)
  short = load("iwae_table1", "vae5_short")
  assert short.num_epochs == 40 and short.num_samples == 5
  # The short schedule is the full one's first 40 epochs, rate for rate.
  full_lr = optim.learning_rate_schedule(cells["vae5"], steps_per_epoch=10)
  short_lr = optim.learning_rate_schedule(short, steps_per_epoch=10)
  assert [float(short_lr(s)) for s in range(0, 400, 7)] == [
      float(full_lr(s)) for s in range(0, 400, 7)]
  sweep_cells = load("iwae_table1", "sweep")
  assert [n for n, _ in grouping.members(sweep_cells)] == list(cells)
  assert len(grouping.groups(grouping.members(sweep_cells))) == 5
  for paper in ("86.76", "86.47", "86.35", "85.54", "84.78"):
    assert paper in (EXPERIMENTS / "iwae_table1.py").read_text()


def test_iwae_table1_short_runs_its_k5_cells(tmp_path):
  """experiments/iwae_table1.py:short's two k = 5 cells (VAE and IWAE), 1
  epoch on the embedded digits: the k-sample bound is recorded and IWAE's
  loss is minus it (every cell: the slow test below)."""
  config = load("iwae_table1", "short")
  config.sweep.members = tuple(m for m in config.sweep.members
                               if m["name"] in ("vae5", "iwae5"))
  rows = sweep.run_sweep(config, tmp_path, progress=False, log=lambda s: None)
  assert [r["member"] for r in rows] == ["vae5", "iwae5"]
  assert all(r["status"] == "finished" for r in rows)
  for name in ("vae5", "iwae5"):
    last = runs.read_metrics(tmp_path / name)[-1]
    assert "train_bound" in last and last["train_bound"] <= 0
  iwae = runs.read_metrics(tmp_path / "iwae5")[-1]
  assert iwae["train_loss"] == -iwae["train_bound"]


@pytest.mark.slow
def test_iwae_table1_short_runs_every_cell(tmp_path):
  """experiments/iwae_table1.py:short, the smoke run: every cell, 1 epoch
  on the embedded digits; the stage-boundary checkpoints are kept."""
  rows = sweep.run_sweep(load("iwae_table1", "short"), tmp_path,
                         progress=False, log=lambda s: None)
  assert [r["member"] for r in rows] == ["vae1", "vae5", "vae50", "iwae5",
                                         "iwae50"]
  assert all(r["status"] == "finished" for r in rows)
  for name in ("vae5", "iwae5"):
    last = runs.read_metrics(tmp_path / name)[-1]
    assert "train_bound" in last and last["train_bound"] <= 0
  iwae = runs.read_metrics(tmp_path / "iwae5")[-1]
  assert iwae["train_loss"] == -iwae["train_bound"]
  epochs = sorted(int(p.name) for p in (tmp_path / "vae1" / "checkpoints").iterdir()
                  if p.name.isdigit())
  assert epochs == [1]
