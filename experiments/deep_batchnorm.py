"""The TFLearn deep VAE: three 512-unit layers with batch normalization in the
encoder and the decoder, latent size 2.

Pitfall it shows: *hidden state*. Batch normalization keeps running averages
that many implementations update as a side effect. Here they are a
``batch_stats`` collection threaded explicitly: each training step takes the
statistics and returns new ones (``vae.model.core.train_terms``, training mode:
batch statistics); evaluation, plots and the test ELBO use the running
averages (evaluation mode), passed as ``{"params", "batch_stats"}``.

  python scripts/train.py --config experiments/deep_batchnorm.py --workdir runs/deep_batchnorm
"""

from vae.config import check_variant, default_config


def get_config(variant: str | None = None):
  check_variant(variant, ("quick",))
  config = default_config()
  config.hidden_sizes = (512, 512, 512)
  config.batch_norm = True
  config.latent_dim = 2
  config.batch_size = 128
  config.num_epochs = 2 if variant == "quick" else 30
  config.checkpoint_every_epochs = 10
  return config
