"""The Keras MLP VAE: 784-512-32 ReLU, Bernoulli, batch 128, 50 epochs.

Reproduces the classic Keras example (``variational_autoencoder.py``) on the
embedded mnist_5k digits.

Pitfall it shows: *hidden sampling*. In the Keras example the sampling layer
sits inside the model, so ``decoder(encoder(x))`` (the mean) and ``vae(x)``
(a sample) give different images and users cannot tell which they are
looking at. Here both paths are explicit: ``reconstruct(params, x)`` decodes
the posterior mean and needs no key; ``reconstruct(params, x, key)`` decodes
a sample. ``scripts/plot.py`` draws them side by side (reconstructions.png).

  python scripts/train.py --config experiments/keras_mlp.py --workdir runs/keras_mlp
  python scripts/train.py --config experiments/keras_mlp.py:quick --workdir /tmp/k
"""

from vae.config import check_variant, default_config


def get_config(variant: str | None = None):
  check_variant(variant, ("quick",))
  config = default_config()
  config.hidden_sizes = (512,)
  config.latent_dim = 32
  config.activation = "relu"
  config.likelihood = "bernoulli"
  config.batch_size = 128
  config.num_epochs = 2 if variant == "quick" else 50
  config.checkpoint_every_epochs = 10
  return config
