"""Likelihoods pinned against closed forms and numerical integration (float64 references)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from vae.model import likelihoods


def _naive_bernoulli(logits, x):
  p = 1.0 / (1.0 + np.exp(-np.float64(logits)))
  return x * np.log(p) + (1 - x) * np.log1p(-p)


def test_bernoulli_matches_naive_formula_on_moderate_logits():
  logits = np.linspace(-15, 15, 301)
  for x in (0.0, 0.3, 1.0):
    got = np.asarray(likelihoods.bernoulli_log_prob(jnp.asarray(logits, jnp.float32), x))
    # float32 evaluation of a float64 reference: relative 1e-5 or absolute 1e-6.
    np.testing.assert_allclose(got, _naive_bernoulli(logits, x), rtol=1e-5, atol=1e-6)


def test_bernoulli_finite_and_exact_at_extreme_logits():
  logits = jnp.array([1e4, -1e4, 1e4, -1e4, 1e4, -1e4])
  x = jnp.array([1.0, 1.0, 0.0, 0.0, 0.5, 0.5])
  got = np.asarray(likelihoods.bernoulli_log_prob(logits, x))
  assert np.all(np.isfinite(got))
  # log sigmoid(1e4) = -exp(-1e4) = 0 in any float; log sigmoid(-1e4) = -1e4.
  np.testing.assert_array_equal(got, [0.0, -1e4, -1e4, 0.0, -5e3, -5e3])
  grads = jax.grad(lambda l: likelihoods.bernoulli_log_prob(l, x).sum())(logits)
  assert np.all(np.isfinite(np.asarray(grads)))


def test_bernoulli_gradients_are_the_closed_form_in_float32():
  # d/dl log p = x - sigmoid(l), d/dx = l; float64 references. The tolerance
  # is a few float32 ulps of values up to 1: 2e-7 absolute, and 1e-6 relative
  # so that tiny derivatives (x = 1, l = 30: 9.4e-14) are exact too.
  logits = np.concatenate([np.linspace(-40, 40, 801), [-1e4, 1e4, 0.0]])
  l32 = jnp.asarray(logits, jnp.float32)
  l64 = np.asarray(l32, np.float64)
  for x in (0.0, 0.3, 1.0):
    x32 = jnp.full_like(l32, x)
    d_logits, d_x = jax.grad(
        lambda l, x: likelihoods.bernoulli_log_prob(l, x).sum(), (0, 1))(l32, x32)
    expected = x - special.expit(l64)
    np.testing.assert_allclose(np.asarray(d_logits), expected, rtol=1e-6, atol=2e-7)
    np.testing.assert_array_equal(np.asarray(d_x), np.asarray(l32))
  # Tiny derivatives keep their relative precision (no 1 - sigmoid cancellation).
  tail = jax.grad(lambda l: likelihoods.bernoulli_log_prob(l, 1.0))(jnp.float32(30.0))
  np.testing.assert_allclose(float(tail), np.exp(-30.0) / (1 + np.exp(-30.0)), rtol=1e-6)
  # Forward-mode gives the same derivative as reverse mode.
  np.testing.assert_array_equal(
      np.asarray(jax.jvp(lambda l: likelihoods.bernoulli_log_prob(l, 0.3),
                         (l32,), (jnp.ones_like(l32),))[1]),
      np.asarray(jax.grad(lambda l: likelihoods.bernoulli_log_prob(l, 0.3).sum())(l32)))


def test_log_likelihood_of_images_equals_the_flat_sum():
  # The data axes are flattened before the element-wise work: same value as
  # summing over [H, W, C], for every likelihood.
  key_l, key_x = jax.random.split(jax.random.key(0))
  logits = jax.random.normal(key_l, (3, 28, 28, 1)) * 4
  x = jax.random.uniform(key_x, (3, 28, 28, 1))
  for name, params in (("bernoulli", logits), ("continuous_bernoulli", logits),
                       ("gaussian", likelihoods.GaussianParams(logits, jnp.float32(-0.5))),
                       ("gaussian", likelihoods.GaussianParams(logits, logits[:1] * 0.1))):
    got = np.asarray(likelihoods.log_likelihood(name, params, x), np.float64)
    if name == "gaussian":
      per_dim = likelihoods.gaussian_log_prob(params.mean, params.log_scale, x)
    elif name == "bernoulli":
      per_dim = likelihoods.bernoulli_log_prob(logits, x)
    else:
      per_dim = likelihoods.continuous_bernoulli_log_prob(logits, x)
    expected = np.asarray(per_dim, np.float64).sum(axis=(1, 2, 3))
    # float32 sums of 784 terms of size <= ~50 in different orders: 1e-5 relative.
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def _cb_log_normalizer_by_integration(lam):
  # C(lambda) = 1 / int_0^1 lambda^x (1 - lambda)^(1 - x) dx, in float64.
  value, _ = integrate.quad(lambda x: lam**x * (1 - lam) ** (1 - x), 0.0, 1.0,
                            epsabs=1e-14, epsrel=1e-13)
  return -np.log(value)


@pytest.mark.parametrize("lam", [1e-4, 0.01, 0.2, 0.45, 0.49, 0.4875, 0.5 - 1e-6,
                                 0.5, 0.5 + 1e-6, 0.5 + 0.0125, 0.51, 0.7, 0.99, 1 - 1e-4])
def test_continuous_bernoulli_normalizer_matches_integration(lam):
  logit = np.log(lam) - np.log1p(-lam)
  got = float(likelihoods.continuous_bernoulli_log_normalizer(jnp.float32(logit)))
  # float32 result, values of order 1-10: 2e-6 absolute is a few ulps.
  assert got == pytest.approx(_cb_log_normalizer_by_integration(lam), abs=2e-6)


def test_continuous_bernoulli_normalizer_is_smooth_across_taylor_band():
  band = likelihoods.CB_TAYLOR_BAND
  logits = jnp.array([band * (1 - 1e-6), band * (1 + 1e-6)], jnp.float32)
  lo, hi = np.asarray(likelihoods.continuous_bernoulli_log_normalizer(logits))
  assert abs(hi - lo) < 1e-6
  grads = jax.vmap(jax.grad(likelihoods.continuous_bernoulli_log_normalizer))(
      jnp.array([0.0, 1e-6, band, 1.0, 1e4, -1e4]))
  assert np.all(np.isfinite(np.asarray(grads)))


@pytest.mark.parametrize("logit", [-30.0, -3.0, -0.04, 0.0, 1e-6, 0.06, 2.0, 30.0])
def test_continuous_bernoulli_density_integrates_to_one_and_mean(logit):
  xs = np.linspace(0.0, 1.0, 20001)
  logp = np.asarray(likelihoods.continuous_bernoulli_log_prob(
      jnp.float32(logit), jnp.asarray(xs, jnp.float32)), np.float64)
  p = np.exp(logp)
  assert integrate.simpson(p, x=xs) == pytest.approx(1.0, abs=2e-5)
  mean = float(likelihoods.continuous_bernoulli_mean(jnp.float32(logit)))
  assert mean == pytest.approx(integrate.simpson(xs * p, x=xs), abs=2e-5)


def test_gaussian_matches_scipy_and_fixed_sigma_is_scaled_mse():
  rng = np.random.default_rng(0)
  x, mean = rng.uniform(size=(2, 50)).astype(np.float32)
  log_scale = rng.normal(size=50).astype(np.float32) * 0.3
  got = likelihoods.gaussian_log_prob(mean, log_scale, x)
  np.testing.assert_allclose(got, stats.norm.logpdf(x, mean, np.exp(log_scale)), rtol=1e-5)
  sigma = 0.5
  fixed = likelihoods.gaussian_log_prob(mean, jnp.log(sigma), x)
  mse_form = -(x - mean) ** 2 / (2 * sigma**2) - np.log(sigma) - 0.5 * np.log(2 * np.pi)
  np.testing.assert_allclose(fixed, mse_form, rtol=1e-6)


def test_log_likelihood_sums_every_data_dimension():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 28, 28, 1)).astype(np.float32)
  x = (rng.uniform(size=(4, 28, 28, 1)) > 0.5).astype(np.float32)
  per_example = likelihoods.log_likelihood("bernoulli", logits, x)
  assert per_example.shape == (4,)
  np.testing.assert_allclose(
      per_example, likelihoods.bernoulli_log_prob(logits, x).reshape(4, -1).sum(-1), rtol=1e-6)
  gauss = likelihoods.log_likelihood(
      "gaussian", likelihoods.GaussianParams(jnp.asarray(logits), jnp.float32(0.0)), x)
  assert gauss.shape == (4,)


def test_means_are_probabilities_not_logits():
  logits = jnp.array([-3.0, 0.0, 3.0])
  np.testing.assert_array_equal(likelihoods.likelihood_mean("bernoulli", logits),
                                jax.nn.sigmoid(logits))
  cb = np.asarray(likelihoods.likelihood_mean("continuous_bernoulli", logits))
  assert np.all((cb > 0) & (cb < 1)) and cb[1] == 0.5


def test_unknown_likelihood_is_named():
  with pytest.raises(ValueError, match="'poisson'.*bernoulli"):
    likelihoods.log_likelihood("poisson", jnp.zeros(3), jnp.zeros(3), data_ndim=1)


@pytest.mark.parametrize("logit,x,clipped_error", [
    (10.0, 0.0, 5e-4), (15.0, 0.0, 0.156), (20.0, 0.0, 4.06), (-20.0, 1.0, 3.88),
    (30.0, 0.0, 14.06)])
def test_clipped_bce_loses_precision_where_log_sigmoid_stays_exact(logit, x, clipped_error):
  # A confidently wrong pixel at logit l costs exactly |l| nats (up to e^-|l|).
  exact = float(likelihoods.bernoulli_log_prob(jnp.float32(logit), x))
  assert exact == pytest.approx(-abs(logit), abs=1e-4)
  clipped = float(likelihoods.bernoulli_clipped_log_prob(jnp.float32(logit), x))
  # The clipped form under-counts it: saturation at log(1e-7) and float32 1 - p.
  assert clipped - exact == pytest.approx(clipped_error, rel=0.02, abs=1e-4)
  grad = jax.grad(lambda l: likelihoods.bernoulli_clipped_log_prob(l, x))(jnp.float32(logit))
  if abs(logit) >= 20:
    assert float(grad) == 0.0  # the clip kills the gradient: the mistake is never corrected
  assert float(jax.grad(lambda l: likelihoods.bernoulli_log_prob(l, x))(jnp.float32(logit))) != 0
