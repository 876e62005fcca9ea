"""Quickstart: a 784-400-20 Bernoulli MLP VAE on the embedded mnist_5k digits.

The README's main job. 4,000 training digits, 1,000 held-out test digits,
batch 128, Adam 1e-3, 100 epochs: well under a minute of training on 2 CPU
cores, offline. Override any field, e.g. ``--config.latent_dim=2``.
"""

from vae.config import default_config


def get_config():
  config = default_config()
  config.dataset = "mnist_5k"
  config.hidden_sizes = (400,)
  config.latent_dim = 20
  config.likelihood = "bernoulli"
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.num_epochs = 100
  return config
