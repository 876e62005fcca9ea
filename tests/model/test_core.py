"""The functional core: deterministic vs stochastic paths, reductions, KL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae
from vae import config as config_lib
from vae.model import core, likelihoods, networks as models


@pytest.fixture(scope="module")
def setup():
  config = config_lib.default_config()
  model = models.build_model(config)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  x = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1))
  return model, params, x


def test_public_api_is_reexported():
  for name in ("encode", "sample", "decode", "reconstruct", "elbo", "Posterior"):
    assert getattr(vae, name) is getattr(core, name)


def test_deterministic_path_is_sigmoid_of_decoded_posterior_mean(setup):
  model, params, x = setup
  expected = jax.nn.sigmoid(vae.decode(params, vae.encode(params, x, model=model).mean,
                                       model=model))
  np.testing.assert_array_equal(vae.reconstruct(params, x, model=model), expected)
  # And it is repeatable: no hidden draw anywhere.
  np.testing.assert_array_equal(vae.reconstruct(params, x, model=model), expected)


def test_stochastic_path_same_key_same_image_other_key_differs(setup):
  model, params, x = setup
  a = vae.reconstruct(params, x, jax.random.key(5), model=model)
  b = vae.reconstruct(params, x, jax.random.key(5), model=model)
  c = vae.reconstruct(params, x, jax.random.key(6), model=model)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0  # probabilities


def test_sample_is_mean_plus_half_logvar_scale_times_standard_normal():
  posterior = core.Posterior(jnp.array([[0.5, -1.0, 2.0]]), jnp.array([[0.0, 2.0, -4.0]]))
  key = jax.random.key(3)
  eps = jax.random.normal(key, (1, 3))
  np.testing.assert_array_equal(core.sample(key, posterior),
                                posterior.mean + jnp.exp(0.5 * posterior.logvar) * eps)
  draws = core.sample(jax.random.key(4), core.Posterior(jnp.full((200_000, 1), 1.0),
                                                       jnp.full((200_000, 1), np.log(4.0))))
  # std of the mean of 2e5 draws with sigma 2 is 0.0045; 5 sigma bounds.
  assert float(draws.mean()) == pytest.approx(1.0, abs=0.023)
  assert float(draws.std()) == pytest.approx(2.0, abs=0.02)


def test_kl_matches_monte_carlo():
  mean = jnp.array([0.3, -1.2, 0.0, 2.0])
  logvar = jnp.array([0.0, -1.0, 1.5, -3.0])
  analytic = core.kl_per_dim(core.Posterior(mean, logvar))
  z = core.sample(jax.random.key(7), core.Posterior(jnp.broadcast_to(mean, (400_000, 4)),
                                                    jnp.broadcast_to(logvar, (400_000, 4))))
  log_q = -0.5 * ((z - mean) ** 2 / jnp.exp(logvar) + logvar + jnp.log(2 * jnp.pi))
  log_p = -0.5 * (z**2 + jnp.log(2 * jnp.pi))
  samples = np.asarray(log_q - log_p, np.float64)
  estimate = samples.mean(0)
  stderr = samples.std(0) / np.sqrt(samples.shape[0])
  # Monte-Carlo estimate within 5 standard errors of the closed form.
  assert np.all(np.abs(estimate - np.asarray(analytic)) < 5 * stderr + 1e-6)
  np.testing.assert_allclose(core.kl_per_dim(core.Posterior(jnp.zeros(3), jnp.zeros(3))), 0.0)


def _nearly_deterministic(params):
  # Encoder log-variance bias -30: posterior std e^-15, so the one-sample
  # ELBO equals its mean up to ~1e-6 nats; the comparison below is then
  # about reductions, not about which epsilon each row drew.
  head = params["encoder"]["head"]
  latent = head["bias"].shape[0] // 2
  bias = head["bias"].at[latent:].set(-30.0)
  kernel = head["kernel"].at[:, latent:].set(0.0)
  return {**params, "encoder": {**params["encoder"], "head": {"bias": bias, "kernel": kernel}}}


def test_elbo_metrics_are_means_of_per_example_values(setup):
  model, params, x = setup
  params = _nearly_deterministic(params)
  _, batch = vae.elbo(params, x, jax.random.key(0), model=model, beta=3.0)
  singles = [vae.elbo(params, x[i:i + 1], jax.random.key(i), model=model, beta=3.0)[1]
             for i in range(x.shape[0])]
  for name in ("loss", "recon", "kl", "elbo", "bits_per_dim"):
    per_example = np.mean([float(s[name]) for s in singles])
    # float32 sums over 784 pixels then a mean over 64: relative 1e-5.
    assert float(batch[name]) == pytest.approx(per_example, rel=1e-5), name


def test_elbo_reductions_sum_pixels_and_latents(setup):
  model, params, x = setup
  key = jax.random.key(11)
  loss, m = vae.elbo(params, x, key, model=model, beta=2.5)
  posterior = vae.encode(params, x, model=model)
  z = vae.sample(key, posterior)
  logits = vae.decode(params, z, model=model)
  log_lik = likelihoods.bernoulli_log_prob(logits, x).reshape(64, -1).sum(-1)
  kl = core.kl_per_dim(posterior).sum(-1)
  np.testing.assert_allclose(m["recon"], -log_lik.mean(), rtol=1e-6)
  np.testing.assert_allclose(m["kl"], kl.mean(), rtol=1e-6)
  np.testing.assert_allclose(m["elbo"], (log_lik - kl).mean(), rtol=1e-6)
  np.testing.assert_allclose(loss, (-(log_lik - 2.5 * kl)).mean(), rtol=1e-6)
  assert float(loss) == float(m["loss"])
  np.testing.assert_allclose(m["bits_per_dim"], -m["elbo"] / (784 * np.log(2)), rtol=1e-6)
  # The recon term is in nats per example (hundreds), not per pixel (< 1).
  assert float(m["recon"]) > 100


@pytest.mark.parametrize("arch,likelihood,learn_scale", [
    ("mlp", "continuous_bernoulli", False), ("conv", "bernoulli", False),
    ("mlp", "gaussian", False), ("mlp", "gaussian", True)])
def test_every_architecture_and_likelihood_gives_finite_elbo(arch, likelihood, learn_scale):
  config = config_lib.default_config()
  config.architecture, config.likelihood, config.learn_scale = arch, likelihood, learn_scale
  config.latent_dim = 5
  model = models.build_model(config)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  assert vae.encode(params, x, model=model).mean.shape == (3, 5)
  loss, metrics = vae.elbo(params, x, jax.random.key(2), model=model)
  assert np.isfinite(float(loss))
  assert vae.reconstruct(params, x, model=model).shape == (3, 28, 28, 1)


@pytest.mark.parametrize("hidden,latent,activation", [
    ((64,), 2, "relu"), ((256,), 5, "relu"), ((512,), 32, "relu"), ((400,), 20, "relu"),
    ((200, 200), 50, "tanh")])
def test_required_mlp_shapes(hidden, latent, activation):
  config = config_lib.default_config()
  config.hidden_sizes, config.latent_dim, config.activation = hidden, latent, activation
  params = models.init_params(models.build_model(config), jax.random.key(0), (28, 28, 1))
  enc = params["encoder"]
  assert enc["Dense_0"]["kernel"].shape == (784, hidden[0])
  assert enc["head"]["kernel"].shape == (hidden[-1], 2 * latent)
  assert params["decoder"]["Dense_0"]["kernel"].shape == (latent, hidden[-1])
  assert params["decoder"]["head"]["kernel"].shape == (hidden[0], 784)
