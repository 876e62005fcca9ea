"""Evaluation: the importance-weighted bound against closed forms, its
invariances, active units, KL, MI, collapse flags, and the evaluate script.

The closed form: a linear-Gaussian VAE (linear encoder, linear decoder,
Gaussian likelihood with fixed sigma) is probabilistic PCA, so
log p(x) = log N(x; b, W W^T + sigma^2 I) exactly, and its ELBO for a given
diagonal Gaussian encoder is also known in closed form.
"""

import functools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vae import config as config_lib
from vae.model import bounds as bounds_lib
from vae.store import checkpoint, runs
from vae.evals import evaluate, evaluator
from vae.train import loop as train
from vae.data import datasets as data
from vae.model import core, diagnostics, likelihoods, networks as models
from vae.model.networks import VAE

REPO = Path(__file__).resolve().parents[2]
REAL_MNIST_DIR = Path(__file__).parents[2] / ".." / "shared" / "data" / "mnist"
REAL_MNIST_IMAGES = REAL_MNIST_DIR / "t10k-images-idx3-ubyte.gz"


# ----------------------------------------------------------------------------
# A linear-Gaussian VAE: probabilistic PCA with a diagonal Gaussian encoder.
# ----------------------------------------------------------------------------


class LinearEncoder(nn.Module):
  """mean = A x + c, logvar = V x + v (V = 0 below: a constant variance)."""

  latent_dim: int

  @nn.compact
  def __call__(self, x, train=False):
    del train
    h = x.reshape(x.shape[:-3] + (-1,))
    return (nn.Dense(self.latent_dim, name="mean")(h),
            nn.Dense(self.latent_dim, name="logvar")(h))


class LinearDecoder(nn.Module):
  """E[x | z] = W z + b, reshaped to ``data_shape``."""

  data_shape: tuple

  @nn.compact
  def __call__(self, z, train=False):
    del train
    out = nn.Dense(math.prod(self.data_shape), name="out")(z)
    return out.reshape(z.shape[:-1] + self.data_shape)


SHAPE = (2, 2, 1)
D, L, SIGMA = 4, 2, 0.5


class PPCA:
  """A pPCA model, an encoder for it, and the closed forms."""

  def __init__(self, seed=0, widen=1.2, shift=0.1, orthogonal=False):
    rng = np.random.default_rng(seed)
    if orthogonal:  # W^T W diagonal: the exact posterior is diagonal
      q, _ = np.linalg.qr(rng.normal(size=(D, D)))
      self.W = q[:, :L] * np.array([1.5, 0.7])
    else:
      self.W = rng.normal(size=(D, L))
    self.b = rng.normal(size=D)
    m = self.W.T @ self.W + SIGMA**2 * np.eye(L)
    self.post_cov = SIGMA**2 * np.linalg.inv(m)
    self.A = np.linalg.inv(m) @ self.W.T  # posterior mean = A (x - b)
    if orthogonal and widen == 1.0:
      self.var_q = np.diag(self.post_cov).copy()  # exact
    else:  # wider than the posterior in every direction: bounded weights
      self.var_q = np.full(L, widen * np.linalg.eigvalsh(self.post_cov).max())
    self.c = -self.A @ self.b + shift * np.sqrt(self.var_q)
    self.cov = self.W @ self.W.T + SIGMA**2 * np.eye(D)
    self.model = VAE(LinearEncoder(L), LinearDecoder(SHAPE), "gaussian", SIGMA)
    self.params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float32),
        {"encoder": {"mean": {"kernel": self.A.T, "bias": self.c},
                     "logvar": {"kernel": np.zeros((D, L)),
                                "bias": np.log(self.var_q)}},
         "decoder": {"out": {"kernel": self.W.T, "bias": self.b}}})

  def data(self, n, seed=1):
    x = np.random.default_rng(seed).multivariate_normal(self.b, self.cov, n)
    return x, jnp.asarray(x.reshape((n,) + SHAPE), jnp.float32)

  def log_density(self, x):
    return stats.multivariate_normal(self.b, self.cov).logpdf(x)

  def elbo(self, x):
    """E_q log p(x | z) - KL(q || p), closed form, per example."""
    mu = x @ self.A.T + self.c
    resid = x - self.b - mu @ self.W.T
    expected_log_lik = (-0.5 * D * np.log(2 * np.pi * SIGMA**2) -
                        (np.sum(resid**2, 1) + (self.W**2).sum(0) @ self.var_q)
                        / (2 * SIGMA**2))
    kl = 0.5 * np.sum(mu**2 + self.var_q - 1 - np.log(self.var_q), 1)
    return expected_log_lik - kl


ROWS = 1024  # examples per compiled call in every linear-Gaussian test


def _bound(params, x, key, *, k, model):
  """``[N]`` bounds via iwae_dataset: its compiled function is cached by
  (k, model, shapes), so tests with equal ones share one compilation
  (compiling, not computing, dominates these tests' time)."""
  return evaluator.iwae_dataset(params, x, key, k, model=model,
                               batch_size=ROWS).bound


def test_linear_gaussian_params_fit_the_model_structure():
  ppca = PPCA()
  fresh = models.init_params(ppca.model, jax.random.key(0), SHAPE)
  assert (jax.tree_util.tree_structure(fresh) ==
          jax.tree_util.tree_structure(ppca.params))
  for a, b in zip(jax.tree_util.tree_leaves(fresh),
                  jax.tree_util.tree_leaves(ppca.params)):
    assert a.shape == b.shape


def test_iwae_is_exact_when_the_encoder_is_the_true_posterior():
  # Then every weight equals p(x): the bound is log p(x) for any k and key.
  ppca = PPCA(orthogonal=True, widen=1.0, shift=0.0)
  np.testing.assert_allclose(ppca.post_cov, np.diag(np.diag(ppca.post_cov)),
                             atol=1e-12)
  x, xs = ppca.data(ROWS)
  for k in (1, 32):
    bound = _bound(ppca.params, xs, jax.random.key(k), k=k, model=ppca.model)
    np.testing.assert_allclose(bound, ppca.log_density(x), atol=2e-4)
  np.testing.assert_allclose(ppca.elbo(x), ppca.log_density(x), atol=1e-9)


def test_iwae_converges_to_the_ppca_log_density():
  # Encoder off the posterior: the ELBO is 1.5 nats below log p(x); k = 5000
  # closes the gap. The estimator's noise (std ~0.01 nats per example here)
  # dominates its bias (~1e-5 nats): tolerance 0.015 nats on the mean over 16
  # examples (>= 5 standard errors), 0.06 on each.
  ppca = PPCA()
  x, xs = ppca.data(16)
  log_p = ppca.log_density(x)
  gap = log_p - ppca.elbo(x)
  assert gap.min() > 1.0
  bound = np.asarray(_bound(ppca.params, xs, jax.random.key(0), k=5000,
                            model=ppca.model))
  assert abs(np.mean(bound - log_p)) < 0.015
  np.testing.assert_allclose(bound, log_p, atol=0.06)


def test_k1_bound_is_the_elbo_in_expectation():
  # 4 examples x 4096 copies, each copy its own draw (keys by example index).
  ppca = PPCA()
  x, xs = ppca.data(4)
  copies = 4096
  bound = _bound(ppca.params, jnp.repeat(xs, copies, axis=0),
                 jax.random.key(3), k=1, model=ppca.model)
  diff = bound.reshape(4, copies) - ppca.elbo(x)[:, None]
  stderr = diff.std() / math.sqrt(diff.size)
  assert abs(diff.mean()) < 5 * stderr, (diff.mean(), stderr)
  # And it agrees with the training ELBO's terms (analytic KL, one draw).
  terms = core.elbo_terms(ppca.params, jnp.repeat(xs, copies, axis=0),
                          jax.random.key(4), model=ppca.model)
  train_elbo = np.asarray(terms.log_likelihood - terms.kl_per_dim.sum(-1))
  assert abs(train_elbo.mean() - ppca.elbo(x).mean()) < 5 * (
      train_elbo.std() / math.sqrt(train_elbo.size))


def test_bound_does_not_decrease_with_k_and_exceeds_the_elbo():
  # Over a fixed set of keys (4 examples x 256 copies, keys by index), the
  # mean bound for each k in KS may fall below the previous one by at most 3
  # standard errors of the paired difference (the draws are nested: k uses
  # the first k draws of k'). It must rise overall, the k = 1 mean must be
  # within 4 standard errors of the closed-form ELBO, and every larger k
  # above it; k = 256 must be within 0.05 nats of log p(x).
  ks = (1, 32, 256)
  ppca = PPCA(seed=2, widen=1.5, shift=0.3)
  x, xs = ppca.data(4, seed=5)
  rep = jnp.repeat(xs, ROWS // 4, axis=0)
  bounds = np.stack([np.asarray(_bound(ppca.params, rep, jax.random.key(11),
                                       k=k, model=ppca.model)) for k in ks])
  means = bounds.mean(1)
  for i in range(1, len(ks)):
    diff = bounds[i] - bounds[i - 1]
    tol = 3 * diff.std() / math.sqrt(diff.size)
    assert means[i] >= means[i - 1] - tol, (ks[i], means)
  overall = bounds[-1] - bounds[0]
  assert overall.mean() > 5 * overall.std() / math.sqrt(overall.size)
  elbo = ppca.elbo(x).mean()
  assert abs(means[0] - elbo) < 4 * bounds[0].std() / math.sqrt(ROWS)
  assert (means[1:] > elbo).all()
  assert means[-1] == pytest.approx(ppca.log_density(x).mean(), abs=0.05)


# ----------------------------------------------------------------------------
# Chunking, batching and draws.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_mlp():
  config = config_lib.default_config()
  config.hidden_sizes, config.latent_dim = (16,), 3
  model = models.build_model(config)
  params = models.init_params(model, jax.random.key(1), (28, 28, 1))
  images = np.random.default_rng(0).uniform(size=(11, 28, 28, 1))
  return model, params, images.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("k", "model"))
def _reference_weights(params, images, key, k, model):
  """Every draw at once, no chunks: ``[N, k]`` log w and log p(x | z)."""
  x = jnp.asarray(images)
  posterior = core.encode(params, x, model=model)
  eps = bounds_lib.standard_normals(bounds_lib.example_keys(key, 0, x.shape[0]), 0,
                                  k, posterior.mean.shape[-1])
  return bounds_lib.log_importance_weights(params, x, posterior, eps,
                                         model=model)


def test_chunking_and_batching_do_not_change_the_result(small_mlp):
  model, params, images = small_mlp
  # 11 examples in batches of 3 (the last one padded), 120 draws in chunks
  # of 50 (the last one partly masked).
  k, key = 120, jax.random.key(7)
  a = evaluator.iwae_dataset(params, images, key, k, model=model, batch_size=3,
                            chunk_size=50)
  # The reference: all 11 examples and 120 draws at once, one logsumexp.
  log_w, log_lik = _reference_weights(params, images, key, k, model)
  ref = np.asarray(jax.nn.logsumexp(log_w, axis=1) - math.log(k))
  np.testing.assert_allclose(a.bound, ref, rtol=0, atol=2e-4)
  np.testing.assert_allclose(a.log_likelihood, log_lik.mean(1), rtol=1e-5)
  assert a.posterior.mean.shape == (11, 3)
  # Draws are nested in k: k = 30 (one chunk, 11 examples in one batch)
  # uses the first 30 of the 120.
  d = evaluator.iwae_dataset(params, images, key, 30, model=model)
  np.testing.assert_allclose(
      d.bound, jax.nn.logsumexp(log_w[:, :30], axis=1) - math.log(30),
      atol=2e-4)
  # Another key, other draws.
  e = evaluator.iwae_dataset(params, images, jax.random.key(8), k, model=model,
                            batch_size=3, chunk_size=50)
  assert not np.allclose(e.bound, a.bound)


# Bernoulli and the fixed-sigma Gaussian are pinned by the tests above.
@pytest.mark.parametrize(("likelihood", "learn_scale"), [
    ("continuous_bernoulli", False), ("gaussian", True)])
def test_log_importance_weights_match_their_definition(likelihood,
                                                       learn_scale):
  # log w = log p(x | z) + log N(z; 0, I) - log N(z; mean, exp(logvar)), with
  # log p(x | z) straight from vae.model.likelihoods on the unflattened images.
  config = config_lib.default_config()
  config.hidden_sizes, config.latent_dim = (8,), 3
  config.likelihood, config.learn_scale = likelihood, learn_scale
  model = models.build_model(config)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28, 1)),
                  jnp.float32)
  eps = jax.random.normal(jax.random.key(1), (2, 5, 3))
  posterior = core.encode(params, x, model=model)
  log_w, log_lik = bounds_lib.log_importance_weights(params, x, posterior, eps,
                                                   model=model)
  z = posterior.mean[:, None] + jnp.exp(0.5 * posterior.logvar[:, None]) * eps
  expected_lik = likelihoods.log_likelihood(
      likelihood, core.decode(params, z, model=model), x[:, None])
  np.testing.assert_allclose(log_lik, expected_lik, rtol=1e-5)
  z64 = np.asarray(z, np.float64)
  std = np.exp(0.5 * np.asarray(posterior.logvar, np.float64))[:, None]
  log_prior = stats.norm.logpdf(z64).sum(-1)
  log_q = stats.norm.logpdf(z64, np.asarray(posterior.mean)[:, None],
                            std).sum(-1)
  np.testing.assert_allclose(log_w, np.asarray(expected_lik) + log_prior -
                             log_q, rtol=1e-5, atol=1e-3)


def test_chunk_layout_and_bad_arguments():
  assert bounds_lib.chunk_layout(1) == (1, 1)
  assert bounds_lib.chunk_layout(50, 20) == (50, 1)
  assert bounds_lib.chunk_layout(5000, 100) == (100, 50)
  assert bounds_lib.chunk_layout(120, 70) == (100, 2)
  with pytest.raises(ValueError, match="k=0 is not accepted"):
    bounds_lib.chunk_layout(0)
  with pytest.raises(ValueError, match="chunk_size=0"):
    bounds_lib.chunk_layout(10, 0)


def test_bound_is_finite_under_extreme_weights(small_mlp):
  # A decoder head scaled 1000x: log w ~ -1e5 and spread over thousands of
  # nats, where exp underflows; the log-domain sum stays finite and exact.
  model, params, images = small_mlp
  params = {**params, "decoder": jax.tree_util.tree_map(
      lambda p: p * 1000.0, params["decoder"])}
  key = jax.random.key(0)
  bound = evaluator.iwae_dataset(params, images, key, 120, model=model,
                                batch_size=3, chunk_size=50).bound
  log_w, _ = _reference_weights(params, images, key, 120, model)
  assert np.isfinite(bound).all() and bound.max() < -1000
  assert float(np.ptp(log_w)) > 1000
  np.testing.assert_allclose(bound, jax.nn.logsumexp(log_w, axis=1) -
                             math.log(120), rtol=1e-6)


# ----------------------------------------------------------------------------
# Latent diagnostics.
# ----------------------------------------------------------------------------


def _scaled_linear_encoder(scales, n=500):
  """Linear model whose posterior mean along unit u is scales[u] * (a fixed
  projection of x); returns (model, params, images, expected variances)."""
  latent = len(scales)
  rng = np.random.default_rng(0)
  proj = rng.normal(size=(D, latent))
  images = rng.uniform(size=(n, D)).astype(np.float32)
  kernel = proj * np.asarray(scales)[None]
  model = VAE(LinearEncoder(latent), LinearDecoder(SHAPE), "gaussian", SIGMA)
  params = jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, jnp.float32),
      {"encoder": {"mean": {"kernel": kernel, "bias": np.zeros(latent)},
                   "logvar": {"kernel": np.zeros((D, latent)),
                              "bias": np.full(latent, -1.0)}},
       "decoder": {"out": {"kernel": rng.normal(size=(latent, D)),
                           "bias": np.zeros(D)}}})
  expected = (images.astype(np.float64) @ kernel).var(0)
  return model, params, images.reshape((n,) + SHAPE), expected


def test_active_units_count_the_dimensions_given_variance():
  # Units 0-2 vary with x (variance ~0.1-1), units 3-5 barely (~1e-5).
  scales = [1.0, 2.0, 1.0, 0.01, 0.003, 0.0]
  model, params, images, expected = _scaled_linear_encoder(scales)
  assert (expected[:3] > 0.05).all() and (expected[3:] < 1e-3).all()
  posterior = core.encode(params, jnp.asarray(images), model=model)
  count, variances = diagnostics.active_units(posterior.mean)
  assert count == 3
  np.testing.assert_allclose(variances, expected, rtol=1e-4, atol=1e-9)
  # The threshold is a strict "greater than".
  assert diagnostics.active_units(posterior.mean, threshold=variances[1])[0] == 0
  assert diagnostics.active_units(np.eye(4)[:, :3] * [1, 0.1, 0.01])[0] == 1
  with pytest.raises(ValueError, match="accepted: \\[N, latent_dim\\] with N >= 2"):
    diagnostics.active_units(np.zeros((1, 3)))


def test_kl_per_dimension_is_the_mean_analytic_kl():
  mean = np.array([[0.0, 1.0], [2.0, -1.0]])
  logvar = np.array([[0.0, np.log(4.0)], [0.0, 0.0]])
  kl = diagnostics.kl_per_dimension(core.Posterior(mean, logvar))
  per = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar)
  np.testing.assert_allclose(kl, per.mean(0), rtol=1e-6)
  np.testing.assert_allclose(kl, [1.0, (0.5 * (4 - np.log(4)) + 0.5) / 2],
                             rtol=1e-6)


@pytest.mark.parametrize(("a", "s"), [(1.0, 0.5), (2.0, 0.3)])
def test_mutual_information_matches_a_gaussian_closed_form(a, s):
  # x ~ N(0, 1), q(z | x) = N(a x, s^2): I(x; z) = 1/2 log(1 + a^2 / s^2).
  # With N = 4000 the estimate's spread is ~0.015 nats: tolerance 0.06.
  x = np.random.default_rng(0).normal(size=(4000, 1))
  posterior = core.Posterior(a * x, np.full_like(x, np.log(s**2)))
  mi = diagnostics.mutual_information(posterior, jax.random.key(0))
  assert mi == pytest.approx(0.5 * math.log(1 + a * a / s / s), abs=0.06)


def test_mutual_information_limits_and_minibatches():
  # Each estimate carries the Monte Carlo error of a mean of n values of
  # log q(z_m | x_m) (1-D: std 0.5 sqrt(2) / sqrt(n) = 0.022): tolerance 4x.
  n = 1000
  rng = np.random.default_rng(1)
  same = core.Posterior(np.zeros((n, 1)), np.zeros((n, 1)))
  assert abs(diagnostics.mutual_information(same, jax.random.key(0))) < 0.09
  # Posteriors that do not overlap: the estimate sits at its ceiling log M.
  apart = core.Posterior(rng.permutation(n)[:, None] * 1.0,
                         np.full((n, 1), -12.0))
  full = diagnostics.mutual_information(apart, jax.random.key(0))
  assert full == pytest.approx(math.log(n), abs=0.09)
  # Minibatches of M (the same draws): the ceiling moves to log M exactly,
  # and a smaller last minibatch weighs by its size (1000 = 3 x 300 + 100).
  by_100 = diagnostics.mutual_information(apart, jax.random.key(0), batch_size=100)
  assert by_100 - full == pytest.approx(math.log(100) - math.log(n), abs=1e-4)
  by_300 = diagnostics.mutual_information(apart, jax.random.key(0), batch_size=300)
  assert by_300 - full == pytest.approx(
      (900 * math.log(300) + 100 * math.log(100)) / n - math.log(n), abs=1e-4)


def test_collapse_flags_and_diagnosis():
  healthy = diagnostics.collapse_diagnosis(
      3, [2.0, 1.0, 0.5, 0.001], posterior_mean_variance=[1.0, 0.5, 0.2, 1e-4])
  assert not healthy["collapsed"]
  assert healthy["inactive_units"] == [3] and healthy["kl_below_floor_units"] == [3]
  assert healthy["diagnosis"].startswith("No posterior collapse: 3 of 4 latent "
                                         "units are active")
  assert ("1 unit is inactive (3), with 0.001 nats of KL together: partial "
          "collapse" in healthy["diagnosis"])
  dead = diagnostics.collapse_diagnosis(0, [0.001, 0.002],
                                     posterior_mean_variance=[1e-5, 1e-6])
  assert dead["collapsed"] and dead["too_few_active_units"]
  assert dead["all_kl_below_floor"]
  assert dead["diagnosis"].startswith("POSTERIOR COLLAPSE: only 0 of 2 latent "
                                      "units are active")
  assert "every latent dimension carries less than 0.01 nats" in dead["diagnosis"]
  # Either condition alone flags the run; the thresholds are arguments.
  assert diagnostics.collapse_diagnosis(2, [0.005, 0.009])["collapsed"]
  few = diagnostics.collapse_diagnosis(2, [1.0, 1.0, 0.0], min_active_units=3)
  assert few["collapsed"] and few["too_few_active_units"]
  assert not few["all_kl_below_floor"]
  assert few["diagnosis"].endswith("carried by 2 unit(s); 1 unit is unused.")


def test_evaluate_params_on_a_collapsed_and_a_healthy_model():
  ppca = PPCA()
  x, xs = ppca.data(2 * ROWS)
  settings = evaluator.BoundSettings(k=32, batch_size=ROWS)
  healthy = evaluator.Evaluator(ppca.model, xs).bound(
      ppca.params, jax.random.key(0), settings).metrics
  assert healthy["active_units"] == 2 and not healthy["collapse"]["collapsed"]
  assert healthy["nll_nats"] == pytest.approx(-ppca.log_density(x).mean(),
                                              abs=0.02)
  assert healthy["elbo"] == pytest.approx(ppca.elbo(x).mean(), abs=0.05)
  assert healthy["rate"] + healthy["distortion"] == pytest.approx(
      -healthy["elbo"], rel=1e-9)
  assert healthy["nll_bits_per_dim"] == pytest.approx(
      healthy["nll_nats"] / (D * math.log(2)))
  assert sum(healthy["kl_per_dim"]) == pytest.approx(healthy["rate"], rel=1e-6)
  assert 0 < healthy["mutual_information"] <= healthy["mutual_information_max"]
  # The encoder ignores x and outputs the prior: nothing gets through.
  params = jax.tree_util.tree_map(jnp.zeros_like, ppca.params)
  params["decoder"] = ppca.params["decoder"]
  dead = evaluator.Evaluator(ppca.model, xs).bound(
      params, jax.random.key(0), settings).metrics
  assert dead["active_units"] == 0 and dead["collapse"]["collapsed"]
  assert dead["rate"] == pytest.approx(0.0, abs=1e-6)
  # 0 up to Monte Carlo error: 4 x 0.5 sqrt(2 L) / sqrt(N) = 0.09 nats.
  assert abs(dead["mutual_information"]) < 0.09
  assert "POSTERIOR COLLAPSE" in dead["collapse"]["diagnosis"]


# ----------------------------------------------------------------------------
# Runs, sweeps, external data and the script.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  config = config_lib.default_config()
  config.hidden_sizes, config.latent_dim = (32,), 4
  config.batch_size, config.num_epochs = 200, 2
  workdir = tmp_path_factory.mktemp("runs") / "tiny"
  train.fit(config, workdir, progress=False, log=lambda s: None)
  return workdir


def _run_script(*args):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                         *map(str, args)], env=env, capture_output=True,
                        text=True)


def test_evaluate_run_writes_eval_json(tiny_run):
  result = evaluate.evaluate_run(
      tiny_run, evaluator.BoundSettings(k=8, batch_size=64)).metrics
  written = json.loads((tiny_run / "eval.json").read_text())
  assert written["nll_nats"] == result["nll_nats"]
  for field in ("run", "checkpoint", "epoch", "dataset", "num_examples", "k",
                "nll_nats", "nll_bits_per_dim", "elbo", "rate", "distortion",
                "kl_per_dim", "active_units", "num_latents",
                "mutual_information", "mutual_information_estimator",
                "collapse", "seed", "keys", "iwae_s", "total_s",
                "peak_rss_mib"):
    assert field in written, field
  assert written["num_examples"] == 1000 and written["dataset"] == "mnist_5k"
  with checkpoint.Checkpoints(tiny_run / runs.CHECKPOINT_DIR) as ckpts:
    best = ckpts.best_epoch()
  assert written["checkpoint"] == "best" and written["epoch"] == best
  assert written["num_latents"] == 4
  assert len(written["kl_per_dim"]) == 4
  assert written["nll_nats"] < -written["elbo"]  # k = 8 beats the ELBO
  # The ELBO agrees with training's own test ELBO at that epoch (one draw
  # there, eight here; 1,000 examples): within 1 nat.
  record = {r["epoch"]: r for r in runs.read_metrics(tiny_run)}[written["epoch"]]
  assert written["elbo"] == pytest.approx(record["test_elbo"], abs=1.0)
  assert "provenance" in written


def test_external_idx_and_npz_give_identical_results(tiny_run, tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), np.uint8)
  data.save_idx(tmp_path / "some-images-idx3-ubyte.gz", images)
  np.savez(tmp_path / "some.npz", images=images.reshape(64, 784))
  settings = evaluator.BoundSettings(k=8, batch_size=64)
  a = evaluate.evaluate_run(
      tiny_run, settings,
      data_path=tmp_path / "some-images-idx3-ubyte.gz").metrics
  b = evaluate.evaluate_run(tiny_run, settings,
                            data_path=tmp_path / "some.npz").metrics
  assert a["num_examples"] == b["num_examples"] == 64
  for field in ("nll_nats", "elbo", "rate", "mutual_information"):
    assert a[field] == b[field]
  assert (tiny_run / "eval_some-images-idx3-ubyte.json").is_file()
  assert json.loads((tiny_run / "eval_some.json").read_text())[
      "data_path"] == str((tmp_path / "some.npz").resolve())


def test_eval_file_names():
  assert runs.eval_file_name(None) == "eval.json"
  assert runs.eval_file_name("/x/t10k-images-idx3-ubyte.gz") == (
      "eval_t10k-images-idx3-ubyte.json")
  assert runs.eval_file_name("my digits.npz") == "eval_my_digits.json"


def test_find_runs(tiny_run, tmp_path):
  assert runs.find_runs(tiny_run) == (False, [tiny_run])
  sweep = tmp_path / "sweep"
  for name in ("b", "a"):
    (sweep / name).mkdir(parents=True)
    (sweep / name / "config.json").write_text("{}")
  (sweep / "plots").mkdir()
  assert runs.find_runs(sweep) == (True, [sweep / "a", sweep / "b"])
  with pytest.raises(runs.RunError, match="neither a run directory"):
    runs.find_runs(sweep / "plots")
  with pytest.raises(runs.RunError, match="does not exist"):
    runs.find_runs(tmp_path / "nope")


def test_script_on_a_sweep_directory(tiny_run, tmp_path):
  sweep = tmp_path / "sweep"
  for name in ("m0", "m1"):
    shutil.copytree(tiny_run, sweep / name,
                    ignore=shutil.ignore_patterns("eval*.json"))
  (sweep / "notes").mkdir()  # not a run: ignored
  images = tmp_path / "few.npy"
  np.save(images, np.random.default_rng(0).uniform(size=(30, 784)))
  out = _run_script("--workdir", sweep, "--k", 3, "--checkpoint", "latest",
                    "--data", images, "--noprogress")
  assert out.returncode == 0, out.stderr
  rows = [l for l in out.stdout.splitlines() if l.startswith(("m0 ", "m1 "))]
  assert len(rows) == 2 and all(" 30 " in r for r in rows), out.stdout
  results = [json.loads((sweep / name / "eval_few.json").read_text())
             for name in ("m0", "m1")]
  assert all(r["k"] == 3 and r["epoch"] == 2 for r in results)
  # Identical members, identical draws: identical numbers.
  assert results[0]["nll_nats"] == results[1]["nll_nats"]


def test_script_rejects_bad_data_with_one_line(tiny_run, tmp_path):
  bad = tmp_path / "bad-images-idx3-ubyte"
  bad.write_bytes(b"\x00\x00\x07\x03" + b"\x00" * 20)  # bad type code
  out = _run_script("--workdir", tiny_run, "--data", bad, "--k", 2)
  assert out.returncode == 2
  assert "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ")
  assert "bad magic number" in lines[0] and str(bad) in lines[0]
  assert not (tiny_run / "eval_bad-images-idx3-ubyte.json").exists()


@pytest.mark.parametrize(("name", "write", "expected"), [
    ("digits.png", lambda p: p.write_bytes(b"\x89PNG"), "Accepted: IDX files"),
    ("cut-images-idx3-ubyte",
     lambda p: p.write_bytes(_idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5]),
     "is truncated"),
    ("small.npy", lambda p: np.save(p, np.zeros((3, 27, 27), np.uint8)),
     r"shape \[3, 27, 27\]; accepted"),
    ("nan.npy", lambda p: np.save(p, np.full((3, 784), np.nan, np.float32)),
     "NaN or infinite"),
])
def test_evaluate_run_rejects_malformed_files(tiny_run, tmp_path, name, write,
                                              expected):
  path = tmp_path / name
  write(path)
  with pytest.raises(data.DataError, match=expected) as err:
    evaluate.evaluate_run(tiny_run, evaluator.BoundSettings(k=2),
                          data_path=path)
  assert str(path) in str(err.value)


def _idx_bytes(array):
  return (bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
          + array.tobytes())


def test_evaluate_run_rejects_other_bad_input(tiny_run, tmp_path):
  small = tmp_path / "one.npy"
  np.save(small, np.zeros((1, 28, 28), np.uint8))
  with pytest.raises(data.DataError, match="at least 2"):
    evaluate.evaluate_run(tiny_run, evaluator.BoundSettings(k=2),
                          data_path=small)
  with pytest.raises(runs.RunError, match="expected a run directory"):
    evaluate.evaluate_run(tmp_path, evaluator.BoundSettings(k=2))
  with pytest.raises(runs.RunError, match="checkpoint 'first' is not accepted"):
    evaluate.evaluate_run(tiny_run, evaluator.BoundSettings(k=2),
                          checkpoint="first")
  with pytest.raises(ValueError, match="k=0 is not accepted"):
    evaluate.evaluate_run(tiny_run, evaluator.BoundSettings(k=0), write=False)


@pytest.mark.skipif(not REAL_MNIST_IMAGES.is_file(),
                    reason=f"real MNIST test files not at {REAL_MNIST_DIR}")
def test_real_mnist_test_set(tiny_run):
  result = evaluate.evaluate_run(
      tiny_run, evaluator.BoundSettings(k=8, batch_size=64),
      data_path=REAL_MNIST_IMAGES, write=False).metrics
  assert result["num_examples"] == 10000
  assert np.isfinite(result["nll_nats"]) and result["split"] is None
  assert result["file"] == "eval_t10k-images-idx3-ubyte.json"


def test_mi_note_says_what_an_estimate_above_log_m_means():
  from vae.evals import evaluate as evaluate_lib
  base = {"mutual_information_max": 4.61, "mutual_information_batch_size": 100}
  assert evaluate_lib._mi_notes({**base, "mutual_information": 3.0}) == []
  near, = evaluate_lib._mi_notes({**base, "mutual_information": 4.4})
  assert "is near its ceiling log M = 4.610 (M = 100 examples)" in near
  above, = evaluate_lib._mi_notes({**base, "mutual_information": 5.37})
  assert "5.370 nats is above its ceiling log M = 4.610" in above
  assert "near its ceiling" not in above
  assert "Monte Carlo error" in above and "I(x; z) >= about log M" in above
