"""vae.train.objectives: the k-sample objectives pinned by value.

The linear-Gaussian VAE (no hidden layers, a Gaussian decoder of fixed
sigma) has a closed-form marginal, p(x) = N(x | b, W^T W + sigma^2 I), so
the importance-weighted bound can be checked against the exact -log p(x).
"""

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from vae.train import objectives
from vae.model.networks import VAE, MLPDecoder, MLPEncoder, init_params

DATA_SHAPE = (3, 1, 1)
LATENT = 2
SIGMA = 0.5
NEUTRAL = objectives.TracedSettings(
    np.float32(1.0), np.float32(0.0), np.int32(0), np.float32(0.0),
    np.float32(1.0), np.float32(0.5))


def linear_gaussian(seed=0, posterior_inflation=None):
  """The model, its parameters and 4 examples ``[4, 3, 1, 1]``. With
  ``posterior_inflation`` c, the encoder gives the exact posterior mean and
  c times the exact posterior's marginal variances (a diagonal q that is
  close to, but never equal to, the correlated true posterior)."""
  model = VAE(MLPEncoder((), LATENT), MLPDecoder((), DATA_SHAPE), "gaussian",
              SIGMA)
  params = init_params(model, jax.random.key(seed), DATA_SHAPE)
  x = jax.random.normal(jax.random.key(seed + 100), (4,) + DATA_SHAPE)
  if posterior_inflation is not None:
    w = np.asarray(params["decoder"]["head"]["kernel"], np.float64)  # [L, D]
    b = np.asarray(params["decoder"]["head"]["bias"], np.float64)
    cov = np.linalg.inv(np.eye(LATENT) + w @ w.T / SIGMA**2)  # [L, L]
    kernel_mean = w.T @ cov / SIGMA**2  # [D, L]: mean = (x - b) @ this
    kernel = np.concatenate([kernel_mean, np.zeros_like(kernel_mean)], 1)
    bias = np.concatenate([-b @ kernel_mean,
                           np.log(posterior_inflation * np.diag(cov))])
    params = jax.tree.map(lambda a: a, params)
    params["encoder"]["head"] = {"kernel": jnp.asarray(kernel, jnp.float32),
                                 "bias": jnp.asarray(bias, jnp.float32)}
  return model, params, x


def exact_log_marginal(params, x) -> np.ndarray:
  """log N(x | b, W^T W + sigma^2 I) per example, float64 numpy, [B]."""
  w = np.asarray(params["decoder"]["head"]["kernel"], np.float64)  # [L, D]
  b = np.asarray(params["decoder"]["head"]["bias"], np.float64)
  d = w.shape[1]
  cov = w.T @ w + SIGMA**2 * np.eye(d)
  r = np.asarray(x, np.float64).reshape(len(x), d) - b
  _, logdet = np.linalg.slogdet(cov)
  quad = np.einsum("bi,ij,bj->b", r, np.linalg.inv(cov), r)
  return -0.5 * (quad + logdet + d * math.log(2 * math.pi))


def over_keys(f):
  """``f(params, key)`` mapped over ``keys`` ``[n]`` one key at a time (a
  vmap would unroll the model's member-by-member products n times)."""
  return jax.jit(lambda params, keys: jax.lax.map(lambda key: f(params, key),
                                                  keys))


def loss_of(objective, model, x, settings=NEUTRAL):
  def loss(params, key):
    value, (terms, _) = objectives.loss_fn(params, None, x, key, settings,
                                           0.0, model=model,
                                           objective=objective)
    return value, terms
  return loss


def iwae(k, gradient="standard"):
  return objectives.Objective("iwae", num_samples=k, iwae_gradient=gradient)


@pytest.mark.slow
def test_iwae_bound_approaches_the_exact_marginal_as_k_grows():
  model, params, x = linear_gaussian(posterior_inflation=1.5)
  exact = float(np.mean(exact_log_marginal(params, x)))
  keys = jax.random.split(jax.random.key(1), 200)
  gaps, errors = [], []
  for k in (1, 5, 50, 500):
    loss = over_keys(loss_of(iwae(k), model, x))
    values = np.asarray(loss(params, keys)[0], np.float64)  # -bound per key
    gaps.append(float(np.mean(values)) + exact)  # E[-bound] - (-log p) >= 0
    errors.append(float(np.std(values) / np.sqrt(len(values))))
  # Each gap is >= 0 within its standard error (a lower bound), shrinks
  # with k (Burda et al., Theorem 1), and at k = 500 is within 0.01 nats
  # (float32 log weights summed over 200 keys: ~1e-5 rounding).
  assert all(g > -3 * e for g, e in zip(gaps, errors)), (gaps, errors)
  assert gaps[0] > gaps[1] > gaps[2] > gaps[3] - 3 * errors[3], gaps
  assert gaps[0] > 0.05, gaps  # q is not the posterior: k = 1 is loose
  assert abs(gaps[3]) < 0.01, gaps


def test_iwae_gradient_matches_a_float64_finite_difference():
  with jax.enable_x64(True):
    model, params, x = linear_gaussian()
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jnp.asarray(x, jnp.float64)
    key = jax.random.key(3)
    for gradient in ("standard", "dreg"):
      loss = jax.jit(lambda p: loss_of(iwae(8, gradient), model, x)(p, key)[0])
      grad = jax.grad(loss)(params)
      flat, unravel = jax.flatten_util.ravel_pytree(params)
      h = 1e-6
      fd = np.array([(loss(unravel(flat.at[i].add(h)))
                      - loss(unravel(flat.at[i].add(-h)))) / (2 * h)
                     for i in range(flat.size)])
      analytic = np.asarray(jax.flatten_util.ravel_pytree(grad)[0])
      if gradient == "standard":
        # The estimator is the gradient of the loss: central differences in
        # float64 agree to ~1e-8 (h^2 truncation and rounding).
        np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-8)
      else:
        # DReG is not the gradient of this loss for a fixed draw (only in
        # expectation); its decoder part is: the same weighted score.
        dec = jax.flatten_util.ravel_pytree(grad["decoder"])[0]
        n_enc = jax.flatten_util.ravel_pytree(params["encoder"])[0].size
        fd_dec = fd[n_enc:] if list(params)[0] == "encoder" else fd[:dec.size]
        np.testing.assert_allclose(np.asarray(dec), fd_dec, rtol=1e-6,
                                   atol=1e-8)


def _gradient_draws(gradient, k, posterior_inflation=None, num_keys=4000):
  model, params, x = linear_gaussian(posterior_inflation=posterior_inflation)
  loss = loss_of(iwae(k, gradient), model, x)
  grads = over_keys(jax.grad(lambda p, key: loss(p, key)[0]))(
      params, jax.random.split(jax.random.key(7), num_keys))
  flat = jax.vmap(lambda g: jax.flatten_util.ravel_pytree(g)[0])
  return (np.asarray(flat(grads["encoder"]), np.float64),
          np.asarray(flat(grads["decoder"]), np.float64))


@pytest.mark.slow
def test_dreg_has_the_standard_expectation_and_lower_encoder_variance():
  k = 50
  standard_enc, standard_dec = _gradient_draws("standard", k)
  dreg_enc, dreg_dec = _gradient_draws("dreg", k)
  n = len(standard_enc)
  for a, b in ((standard_enc, dreg_enc), (standard_dec, dreg_dec)):
    se = np.sqrt(a.var(0) / n + b.var(0) / n)
    # Independent estimates of one expectation: every coordinate within 5
    # combined standard errors (2 x 4000 draws).
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 5 * se + 1e-7), (
        a.mean(0), b.mean(0), se)
  # Tucker et al.: as q approaches the posterior (a trained model) the
  # standard encoder gradient keeps a score-function noise that DReG's
  # loses; at k = 50 with q near the posterior its variance is far lower
  # (measured ratio 4e-5).
  standard_enc = _gradient_draws("standard", k, posterior_inflation=1.5)[0]
  dreg_enc = _gradient_draws("dreg", k, posterior_inflation=1.5)[0]
  ratio = dreg_enc.var(0).sum() / standard_enc.var(0).sum()
  assert ratio < 0.01, ratio


def test_iwae_bound_is_above_the_vae_bound_on_the_same_batch_and_key():
  model, params, x = linear_gaussian()
  keys = jax.random.split(jax.random.key(11), 500)
  for k in (5, 50):
    vae_k = objectives.Objective("vae", num_samples=k)
    bounds = {}
    for name, objective in (("vae", vae_k), ("iwae", iwae(k))):
      terms = over_keys(loss_of(objective, model, x))(params, keys)[1]
      bounds[name] = np.asarray(terms["bound"], np.float64)  # [keys, B]
    # The analytic-KL VAE-k bound and IWAE-k bound use the same draws; in
    # expectation IWAE-k is the tighter one (Burda et al., Theorem 1), by
    # many standard errors on this model.
    diff = bounds["iwae"] - bounds["vae"]
    assert diff.mean() > 5 * diff.std() / np.sqrt(diff.size), k
    # Per draw the ordering can flip (the VAE bound's KL is analytic, the
    # IWAE weights' is sampled), so it is checked in mean only.


def test_k1_objectives_are_the_one_sample_elbo_bit_for_bit():
  model, params, x = linear_gaussian()
  key = jax.random.key(5)
  reference = loss_of(objectives.Objective("vae"), model, x)
  for objective in (iwae(1), objectives.Objective("vae", num_samples=1)):
    value, grads = jax.jit(jax.value_and_grad(
        lambda p: loss_of(objective, model, x)(p, key)[0]))(params)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(
        lambda p: reference(p, key)[0]))(params)
    assert np.asarray(value).tobytes() == np.asarray(ref_value).tobytes()
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_k_draws_do_not_depend_on_k():
  """The first k draws of a larger k are those of k (fold_in per draw)."""
  from vae import rng
  key = jax.random.key(9)
  five = jax.vmap(jax.random.key_data)(rng.draw_keys(key, 5))
  fifty = jax.vmap(jax.random.key_data)(rng.draw_keys(key, 50))
  np.testing.assert_array_equal(np.asarray(five), np.asarray(fifty[:5]))
  np.testing.assert_array_equal(np.asarray(five[0]),
                                np.asarray(jax.random.key_data(key)))


@pytest.mark.parametrize("field,value", [("beta", 2.0), ("free_bits", 0.5),
                                         ("kl_schedule", "linear")])
def test_iwae_refuses_kl_settings_naming_the_field(field, value):
  from vae import config as config_lib
  from vae.errors import ConfigError
  config = config_lib.default_config()
  config.objective, config.num_samples = "iwae", 5
  config[field] = value
  with pytest.raises(ConfigError, match=field):
    config_lib.validate(config)
