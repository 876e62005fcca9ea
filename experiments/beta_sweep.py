"""The beta sweep: 7 KL weights x 3 seeds of a 784-512-2 MLP VAE on mnist_5k.

What users come for: how the rate (KL, nats) falls and the distortion
(-log p(x|z), nats) rises as beta grows, with seed-to-seed spread. All 21
members differ only in traced values (beta, seed), so they train as one
compiled program, vmapped over a member axis sharded across every device.

  python scripts/sweep.py --config experiments/beta_sweep.py --workdir runs/beta_sweep
  python scripts/sweep.py --config experiments/beta_sweep.py:small --workdir runs/beta_sweep_small

The ``small`` variant (the README's main job, ``make run``): 4 betas x 2
seeds, 20 epochs. Any axis can be overridden, e.g.
``--config.sweep.beta='(0.5,4)' --config.sweep.seed='(0,)'``.
"""

import ml_collections

from vae.config import check_variant, default_config


def get_config(variant: str | None = None):
  check_variant(variant, ("small",))
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
  if variant == "small":
    config.num_epochs = 20
    config.sweep = ml_collections.ConfigDict({"beta": (0.25, 1.0, 4.0, 8.0),
                                              "seed": (0, 1)})
  return config
