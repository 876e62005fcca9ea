"""The Keras blog VAE with a 2-D latent: 784-64-2, beta = 2, batch 32, 20 epochs.

Reproduces "Building Autoencoders in Keras" (the 2-D latent version) on
mnist_5k; its figures are the latent scatter coloured by digit and the 2-D
manifold decoded at standard-normal quantiles.

Pitfall it shows: *probabilities versus logits*. The decoder returns logits;
every picture here shows sigmoid(logits) (pixel probabilities). Plotting the
raw logits gives the grey, low-contrast manifolds seen in many re-implementations.

  python scripts/train.py --config experiments/keras_blog_latent2.py --workdir runs/keras_blog_latent2
  python scripts/plot.py --workdir runs/keras_blog_latent2
"""

from vae.config import check_variant, default_config


def get_config(variant: str | None = None):
  check_variant(variant, ("quick",))
  config = default_config()
  config.hidden_sizes = (64,)
  config.latent_dim = 2
  config.beta = 2.0
  config.batch_size = 32
  config.num_epochs = 2 if variant == "quick" else 20
  config.checkpoint_every_epochs = 5
  return config
