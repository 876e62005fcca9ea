"""The beta sweep: 7 KL weights x 3 seeds of a 784-512-2 MLP VAE on mnist_5k.

What users come for: how the rate (KL, nats) falls and the distortion
(-log p(x|z), nats) rises as beta grows, with seed-to-seed spread. All 21
members differ only in traced values (beta, seed), so they train as one
compiled program, vmapped over a member axis sharded across every device.

  python scripts/sweep.py --config experiments/beta_sweep.py --workdir runs/beta_sweep
  python scripts/sweep.py --config experiments/beta_sweep.py --workdir runs/small \
      --config.sweep.beta='(0.5,4)' --config.sweep.seed='(0,)'
"""

import ml_collections

from vae.config import default_config


def get_config():
  config = default_config()
  config.dataset = "mnist_5k"
  config.hidden_sizes = (512,)
  config.latent_dim = 2
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.num_epochs = 50
  config.checkpoint_every_epochs = 10
  config.sweep = ml_collections.ConfigDict({
      "beta": (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
      "seed": (0, 1, 2),
  })
  return config
