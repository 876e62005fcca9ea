"""The KL-weight forum thread: an autoencoder and KL weights {0.5, 1, 5} with
latent 30, a linear encoder, a linear+tanh decoder and a Gaussian likelihood
(MSE), plus a deliberately BROKEN variant.

As in the PyTorch forum thread on "all inputs decode to the same image":
the likelihood is a Gaussian with sigma^2 = 1/2, so -log p(x|z) is the
*summed* squared error plus a constant (nats per example).

Pitfall it shows: *mismatched reductions*. The member named
``BROKEN_mean_pixels_demo`` is a demonstration, not a model to use: its
training loss takes the per-pixel MEAN of the squared error but the SUM of
the KL over latents, which weights the KL 784 times too much. Its posterior
collapses (KL ~ 0) and every input decodes to nearly the same image; the
correctly reduced beta1 member beside it does not. Reported metrics of every
member are the true nats per example.

  python scripts/sweep.py --config experiments/kl_weight_sweep.py --workdir runs/kl_weight_sweep
  python scripts/plot.py --workdir runs/kl_weight_sweep
"""

import math

import ml_collections

from vae.config import check_variant, default_config


def get_config(variant: str | None = None):
  check_variant(variant, ("quick",))
  config = default_config()
  config.hidden_sizes = ()  # linear encoder; linear decoder ...
  config.decoder_output_activation = "tanh"  # ... followed by tanh
  config.latent_dim = 30
  config.likelihood = "gaussian"
  config.gaussian_sigma = math.sqrt(0.5)  # -log p = sum of squared errors + c
  config.batch_size = 128
  config.num_epochs = 2 if variant == "quick" else 30
  config.checkpoint_every_epochs = 10
  config.sweep = ml_collections.ConfigDict({"members": (
      {"name": "autoencoder", "objective": "autoencoder"},
      {"name": "beta0.5", "beta": 0.5},
      {"name": "beta1", "beta": 1.0},
      {"name": "beta5", "beta": 5.0},
      {"name": "BROKEN_mean_pixels_demo", "beta": 1.0, "reduction": "mean_pixels"},
  )})
  return config
