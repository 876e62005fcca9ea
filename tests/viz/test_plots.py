"""Figures: every PNG is written, valid, of its pixel size, not blank, and the
same bytes for the same run and seed; what the images show, pinned by value;
the sweep figures; the optional TensorBoard writer."""

import functools
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from vae import config as config_lib
from vae.model import core, likelihoods
from vae.data import datasets as data, preprocess
from vae.viz import figures, plots, tensorboard
from vae.sweep import figures as sweep_figures, report, runner as sweep_runner
from vae.train import loop as train
from vae.store import restore, runs
from vae.viz import images as images_lib

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_VARIANCE = 50.0  # grey-level variance (0..255): a blank figure has ~0


def tiny_config(**overrides):
  return config_lib.with_fields(**{"hidden_sizes": (64,), "latent_dim": 2,
                                   "batch_size": 100, "num_epochs": 2, **overrides})


def fit(config, workdir):
  train.fit(config, workdir, progress=False, log=lambda s: None)
  return Path(workdir)


def check_png(path, size):
  """A valid PNG of ``size`` = (width, height) pixels that is not blank."""
  path = Path(path)
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE, path
  Image.open(io.BytesIO(data)).verify()
  image = Image.open(io.BytesIO(data))
  assert image.size == size, (path.name, image.size, size)
  grey = np.asarray(image.convert("L"), np.float64)
  assert grey.var() > MIN_VARIANCE, (path.name, grey.var())


def digest(path):
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def read_mnist_5k_once():
  """mnist_5k is parsed from text (~3 s); these tests read it once."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(data, "load_dataset", functools.lru_cache(data.load_dataset))
    yield


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
  return fit(tiny_config(), tmp_path_factory.mktemp("runs") / "lat2")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """Three VAE members (beta 0.5 x seeds 0, 1; beta 2 x seed 0), latent 3,
  trained as one sweep, and a stand-in autoencoder member "ae"."""
  root = tmp_path_factory.mktemp("sweep")
  members = (("b0.5_s0", 0.5, 0), ("b0.5_s1", 0.5, 1), ("b2_s0", 2.0, 0))
  configs = [tiny_config(latent_dim=3, beta=b, seed=s) for _, b, s in members]
  workdirs = [root / name for name, _, _ in members]
  if hasattr(train, "fit_members"):  # one compiled program for all three
    train.fit_members(configs, workdirs, progress=False, log=lambda s: None)
  else:
    for config, workdir in zip(configs, workdirs):
      fit(config, workdir)
  # The figures read a baseline's config and checkpoint only: a copy of a
  # member relabelled objective="autoencoder" stands in for a trained one
  # (saves a compile; training the objective is tested elsewhere).
  shutil.copytree(root / "b2_s0", root / "ae")
  config = json.loads((root / "ae" / runs.CONFIG_FILE).read_text())
  config["objective"] = "autoencoder"
  runs.write_json_atomic(root / "ae" / runs.CONFIG_FILE, config)
  return root


RUN2D_SIZES = {
    "reconstructions.png": (1000, 592),
    "prior_samples.png": (700, 760),
    "latent_manifold.png": (800, 860),
    "latent_scatter.png": (600, 570),
    "traversals.png": (860, 262),
    "neighbourhood.png": (1000, 780),
    "training_curves.png": (1350, 450),
    "kl_per_dim.png": (600, 420),
}


@pytest.fixture(scope="module")
def drawn2d(run2d):
  """plot_run of the 2-D run (seed 0, best checkpoint): name -> (path,
  sha256)."""
  return {p.name: (p, digest(p)) for p in figures.plot_run(run2d, seed=0)}


def test_plot_run_2d_writes_every_figure(run2d, drawn2d):
  assert list(drawn2d) == list(RUN2D_SIZES)
  for name, (path, _) in drawn2d.items():
    assert path.parent == run2d / "figures"
    check_png(path, RUN2D_SIZES[name])


def test_plot_run_3d_uses_pca_and_tsne(sweep):
  run = sweep / "b0.5_s0"
  paths = {p.name: p for p in figures.plot_run(run, seed=0, tsne_points=100)}
  assert "latent_manifold.png" not in paths
  sizes = {**RUN2D_SIZES, "latent_scatter.png": (1070, 570),
           "traversals.png": (860, 150 + 56 * 3)}
  for name, p in paths.items():
    check_png(p, sizes[name])
  assert set(paths) == set(sizes) - {"latent_manifold.png"}


def test_reconstructions_show_both_paths_exactly(run2d, tmp_path):
  loaded = restore.load_run(run2d)
  params, model = loaded.params, loaded.model
  x = preprocess.load_test_set(loaded.config).images[:7]
  key = jax.random.key(5)
  drawn = plots.reconstructions(params, model, x, key, tmp_path / "r.png",
                                cols=4)
  check_png(drawn.path, (1000, 140 + 226 * 2))
  a = drawn.arrays
  np.testing.assert_array_equal(a["originals"], x)
  np.testing.assert_array_equal(a["deterministic"],
                                core.reconstruct(params, x, model=model))
  np.testing.assert_array_equal(a["stochastic"],
                                core.reconstruct(params, x, key, model=model))
  assert not np.array_equal(a["deterministic"], a["stochastic"])
  # Probabilities, not logits: sigmoid of the decoder output at the mean.
  logits = core.decode(params, core.encode(params, x, model=model).mean,
                       model=model)
  np.testing.assert_allclose(a["deterministic"], jax.nn.sigmoid(logits),
                             rtol=0, atol=1e-6)
  assert a["deterministic"].min() >= 0 and a["deterministic"].max() <= 1
  # The grid: per set of 4 images, rows originals / deterministic / stochastic.
  grid = a["grid"]
  assert grid.shape == (6 * 29 + 1, 4 * 29 + 1, 1)
  cell = lambda r, c: grid[1 + 29 * r:29 * (r + 1), 1 + 29 * c:29 * (c + 1)]
  np.testing.assert_array_equal(cell(0, 2), x[2])
  np.testing.assert_array_equal(cell(1, 2), a["deterministic"][2])
  np.testing.assert_array_equal(cell(5, 1), a["stochastic"][5])
  np.testing.assert_array_equal(cell(3, 3), images_lib.PAD_VALUE)  # no 8th image


def test_sampled_and_gridded_latents_by_value(run2d, tmp_path):
  from scipy.stats import norm
  loaded = restore.load_run(run2d)
  params, model = loaded.params, loaded.model
  key = jax.random.key(3)
  prior = plots.prior_samples(params, model, key, tmp_path / "p.png", n=9)
  np.testing.assert_array_equal(prior.arrays["z"],
                                jax.random.normal(key, (9, 2)))
  np.testing.assert_array_equal(
      prior.arrays["images"],
      likelihoods.likelihood_mean("bernoulli", core.decode(
          params, prior.arrays["z"], model=model)))
  other = plots.prior_samples(params, model, jax.random.key(4),
                              tmp_path / "p4.png", n=9)
  assert digest(other.path) != digest(prior.path)  # the key is used

  manifold = plots.latent_manifold(params, model, tmp_path / "m.png", n=5)
  q = norm.ppf(np.linspace(0.05, 0.95, 5))
  np.testing.assert_allclose(manifold.arrays["z"][0, :, 0], q, atol=1e-6)
  np.testing.assert_allclose(manifold.arrays["z"][:, 0, 1], q[::-1], atol=1e-6)
  np.testing.assert_allclose(  # batched vs single decode: float rounding
      manifold.arrays["images"][4, 0],
      images_lib.decode_means(params, model, manifold.arrays["z"][4, 0]), atol=1e-6)


def test_traversal_and_neighbourhood_latents(sweep, tmp_path):
  loaded = restore.load_run(sweep / "b0.5_s0")
  params, model = loaded.params, loaded.model
  image = preprocess.load_test_set(loaded.config).images[11]
  post = core.encode(params, image[None], model=model)
  mean, std = np.asarray(post.mean[0]), np.exp(0.5 * np.asarray(post.logvar[0]))

  t = plots.traversals(params, model, image, tmp_path / "t.png", n_steps=7)
  z = t.arrays["z"]
  assert z.shape == (3, 7, 3)
  np.testing.assert_allclose(z[1, :, 1], np.linspace(-3, 3, 7), atol=1e-6)
  np.testing.assert_allclose(z[1, :, 0], mean[0])  # the others: the mean
  np.testing.assert_allclose(z[1, :, 2], mean[2])

  nb = plots.neighbourhood_grid(params, model, image, tmp_path / "n.png")
  kl = np.asarray(core.kl_per_dim(post))[0]
  a, b = nb.arrays["dims"]
  assert [a, b] == list(np.argsort(-kl)[:2])
  z = nb.arrays["z"]
  np.testing.assert_allclose(z[4, 4], mean, rtol=1e-6)  # the centre
  np.testing.assert_allclose(z[4, 0, a], mean[a] - 4 * std[a], rtol=1e-5)
  np.testing.assert_allclose(z[0, 4, b], mean[b] + 4 * std[b], rtol=1e-5)
  np.testing.assert_allclose(nb.arrays["images"][4, 4],
                             images_lib.decode_means(params, model, z[4, 4]),
                             atol=1e-6)


def test_plot_sweep_writes_rate_distortion_and_reconstructions(sweep):
  paths = {p.name: p for p in sweep_figures.plot_sweep(sweep, seed=0, tsne_points=100)}
  # The one rate-distortion figure of the sweep, beside its members.
  assert paths["rate_distortion.png"] == sweep / "rate_distortion.png"
  check_png(paths["rate_distortion.png"], (1250, 520))
  check_png(paths["sweep_reconstructions.png"], (1000, 100 + 84 * 3))
  # The autoencoder member is found and drawn beside the VAE closest to
  # beta = 1: 2 projections (rows) x (VAE, autoencoder) (columns).
  check_png(paths["latent_scatter.png"], (1070, 1070))
  assert len(paths) == 3
  # Its rows are the test metrics training logged at each member's final
  # epoch, exactly (no second computation of the test ELBO).
  rows = {r["member"]: r for r in report.sweep_rows(sweep)}
  assert sorted(rows) == ["ae", "b0.5_s0", "b0.5_s1", "b2_s0"]
  assert set(rows["b0.5_s0"]) >= {"beta", "seed"}
  for name in ("b0.5_s0", "b0.5_s1", "b2_s0"):
    final = runs.read_metrics(sweep / name)[-1]
    assert rows[name]["rate"] == final["test_kl"]
    assert rows[name]["distortion"] == final["test_recon"]
    assert rows[name]["status"] == "finished"
  before = (sweep / "rate_distortion.png").read_bytes()
  sweep_runner.write_report(list(rows.values()), sweep)  # as scripts/sweep.py does
  assert (sweep / "rate_distortion.png").read_bytes() == before


def test_rate_distortion_statistics_and_bad_rows(tmp_path):
  rows = [{"beta": 1.0, "seed": 0, "rate": 10.0, "distortion": 100.0},
          {"beta": 1.0, "seed": 1, "rate": 12.0, "distortion": 98.0},
          {"beta": 4.0, "seed": 0, "rate": 3.0, "distortion": 130.0}]
  drawn = plots.rate_distortion(rows, tmp_path / "rd.png")
  check_png(drawn.path, (1250, 520))
  np.testing.assert_array_equal(drawn.arrays["betas"], [1.0, 4.0])
  np.testing.assert_allclose(drawn.arrays["rate_mean"], [11.0, 3.0])
  np.testing.assert_allclose(drawn.arrays["rate_std"], [1.0, 0.0])
  np.testing.assert_allclose(drawn.arrays["distortion_mean"], [99.0, 130.0])
  with pytest.raises(ValueError, match=r"lacks \['distortion'\]"):
    plots.rate_distortion([{"beta": 1, "seed": 0, "rate": 1}],
                          tmp_path / "x.png")
  with pytest.raises(ValueError, match="at least one"):
    plots.training_curves([], tmp_path / "x.png")


def test_plot_script_is_deterministic_and_reports_user_errors(run2d, drawn2d):
  env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
         "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, str(REPO / "scripts" / "plot.py")]
  bad = subprocess.run(cmd + ["--workdir", str(run2d), "--checkpoint", "last"],
                       capture_output=True, text=True, env=env)
  assert bad.returncode == 2 and "'last' is not accepted" in bad.stderr
  assert "Traceback" not in bad.stderr
  # Another process, the same run and seed: the same bytes (no timestamps,
  # no state carried between figures).
  ok = subprocess.run(cmd + ["--workdir", str(run2d), "--seed", "0"],
                      capture_output=True, text=True, env=env)
  assert ok.returncode == 0, ok.stderr
  printed = [Path(line) for line in ok.stdout.split()]
  assert [p.name for p in printed] == list(RUN2D_SIZES)
  for p in printed:
    assert digest(p) == drawn2d[p.name][1], p.name


# ----------------------------------------------------------------------------
# TensorBoard.
# ----------------------------------------------------------------------------


def test_scalar_tags_and_image_checks():
  record = {"epoch": 3, "train_loss": 1.5, "test_elbo": -2.0,
            "learning_rate": 1e-3, "epoch_s": 0.2, "note": "x", "flag": True}
  assert tensorboard.scalar_tags(record) == {
      "train/loss": 1.5, "test/elbo": -2.0, "learning_rate": 1e-3,
      "time/epoch_s": 0.2}
  image, formats = tensorboard.check_image(np.zeros((5, 6, 1)))
  assert image.shape == (5, 6) and formats == "HW"
  with pytest.raises(ValueError, match=r"\[-1, 2\].*\[0, 1\]"):
    tensorboard.check_image(np.array([[-1.0, 2.0]]))
  with pytest.raises(ValueError, match=r"shape \(2, 2, 2\)"):
    tensorboard.check_image(np.zeros((2, 2, 2)))


def test_logger_is_a_silent_no_op_without_tensorboardx(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
  notes = []
  logger = tensorboard.TensorBoardLogger.create(tmp_path, log=notes.append)
  assert not logger.enabled
  logger.scalars(1, {"train_loss": 1.0})
  logger.image(1, "reconstructions", np.zeros((4, 4)))
  logger.close()
  assert not (tmp_path / "tensorboard").exists()
  assert tensorboard.export_run(tmp_path, log=notes.append) is None
  assert len(notes) <= 1  # the note is given once per process


def test_logger_writes_readable_events(tmp_path, run2d):
  pytest.importorskip("tensorboardX")
  with tensorboard.TensorBoardLogger.create(tmp_path) as logger:
    assert logger.enabled
    logger.scalars(1, {"epoch": 1, "train_loss": 3.5, "eval_s": 0.1})
    logger.scalars(2, {"epoch": 2, "train_loss": 2.5, "eval_s": 0.1})
    logger.image(2, "recon", np.linspace(0, 1, 12).reshape(3, 4))
  files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(files) == 1 and files[0].stat().st_size > 0
  events = tensorboard.read_events(files[0])
  scalars = [(e.step, v.tag, v.simple_value) for e in events
             for v in e.summary.value if v.HasField("simple_value")]
  assert (1, "train/loss", 3.5) in scalars and (2, "train/loss", 2.5) in scalars
  assert any(tag == "time/eval_s" for _, tag, _ in scalars)
  images = [v.image for e in events for v in e.summary.value
            if v.HasField("image")]
  assert [(i.width, i.height) for i in images] == [(4, 3)]
  decoded = np.asarray(Image.open(io.BytesIO(images[0].encoded_image_string)))
  assert decoded.min() == 0 and decoded.max() == 255

  logdir = tensorboard.export_run(run2d)
  (exported,) = logdir.glob("events.out.tfevents.*" + tensorboard.EXPORT_SUFFIX)
  events = tensorboard.read_events(exported)
  steps = sorted({e.step for e in events for v in e.summary.value
                  if v.tag == "test/elbo"})
  assert steps == [r["epoch"] for r in runs.read_metrics(run2d)]
  images = [v.image for e in events for v in e.summary.value
            if v.tag == "reconstructions"]
  assert [(i.width, i.height) for i in images] == [(10 * 29 + 1, 6 * 29 + 1)]
  tensorboard.export_run(run2d)  # a second export replaces the first
  assert len(list(logdir.glob("*" + tensorboard.EXPORT_SUFFIX))) == 1


@pytest.fixture
def no_clipped_text(monkeypatch):
  """Every figure saved while active must keep all its text on the canvas
  (plots.texts_outside_canvas); the offenders are collected by file."""
  clipped = {}
  save = plots._save

  def checked_save(fig, path):
    outside = plots.texts_outside_canvas(fig)
    if outside:
      clipped[Path(path).name] = outside
    return save(fig, path)

  monkeypatch.setattr(plots, "_save", checked_save)
  return clipped


def test_no_text_leaves_the_canvas(run2d, sweep, tmp_path, no_clipped_text):
  figures.plot_run(run2d, seed=0, out_dir=tmp_path / "run")
  demo = tmp_path / "sweep"
  shutil.copytree(sweep, demo)
  broken = demo / "BROKEN_mean_pixels_demo"  # labelled by its name
  shutil.copytree(demo / "b2_s0", broken)
  config = json.loads((broken / runs.CONFIG_FILE).read_text())
  config["reduction"], config["beta"] = "mean_pixels", 1.0
  runs.write_json_atomic(broken / runs.CONFIG_FILE, config)
  sweep_figures.plot_sweep(demo, seed=0, tsne_points=100)
  rows = [{"beta": b, "seed": 0, "rate": r, "distortion": d}
          for b, r, d in ((0.1, 12.0, 160.0), (1.0, 6.0, 170.0),
                          (8.0, 2.0, 185.0), (16.0, 1.0, 190.0))]
  plots.rate_distortion(rows, tmp_path / "rd.png")
  assert no_clipped_text == {}


def test_latent_scatter_picks_a_vae_by_name_never_a_demonstration(
    sweep, tmp_path, monkeypatch):
  """A BROKEN demonstration member at beta = 1 (closest to 1, and first by
  name) is never the scatter's "VAE"; the panel is labelled by member name."""
  demo = tmp_path / "sweep"
  shutil.copytree(sweep, demo)
  broken = demo / "BROKEN_mean_pixels_demo"
  shutil.copytree(demo / "b2_s0", broken)
  config = json.loads((broken / runs.CONFIG_FILE).read_text())
  config["reduction"], config["beta"] = "mean_pixels", 1.0
  runs.write_json_atomic(broken / runs.CONFIG_FILE, config)
  drawn = {}
  scatter = plots.latent_scatter

  def recording(*args, **kwargs):
    drawn["names"] = kwargs["names"]
    return scatter(*args, **kwargs)

  monkeypatch.setattr(plots, "latent_scatter", recording)
  sweep_figures.plot_sweep(demo, seed=0, tsne_points=100)
  # betas 0.5 and 2 are equally far from 1 in log; the lower beta wins, its
  # lowest seed; then the autoencoder member by its name.
  assert drawn["names"] == ("b0.5_s0 (VAE, beta=0.5)", "ae (autoencoder)")


def test_rate_distortion_gives_rate_and_distortion_their_own_axes(
    tmp_path, monkeypatch):
  saved = {}
  save = plots._save
  monkeypatch.setattr(plots, "_save",
                      lambda fig, path: saved.setdefault("fig", fig) and save(fig, path))
  rows = [{"beta": b, "seed": 0, "rate": r, "distortion": d}
          for b, r, d in ((0.5, 9.0, 160.0), (2.0, 3.0, 180.0))]
  plots.rate_distortion(rows, tmp_path / "rd.png")
  fig = saved["fig"]
  # RD plane, its beta colour bar, and rate/distortion on twin y axes.
  labels = sorted(ax.get_ylabel() for ax in fig.axes)
  assert labels == ["beta (member colour)", "distortion (nats per example)",
                    "distortion: mean -log p(x|z) (nats)",
                    "rate (nats per example)"]
  rate_ax = next(a for a in fig.axes if a.get_ylabel().startswith("rate"))
  lo, hi = rate_ax.get_ylim()
  assert lo < 3.0 and hi > 9.0 and hi - lo < 20  # the rate's own scale
