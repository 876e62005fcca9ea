"""Logits versus clipped probabilities: 784-256-5, lr 1e-4, batch 100.

Pitfall it shows: *epsilon-clipped BCE*. Many implementations compute
``x log(clip(sigmoid(l), eps, 1 - eps)) + ...`` on probabilities. In float32,
1 - sigmoid(l) rounds to 0 once l > ~17: the clip takes over, the
log-probability saturates at log(eps) = -16.1 nats per pixel and its gradient
vanishes, so confident mistakes stop being corrected and the loss is biased.
The ``logits`` member uses log-sigmoid forms, exact at any logit.
Both members report the same exact test metrics (nats per example); the
difference is only in what they trained on.

Where the clipped form loses precision (log-probability of a confidently
wrong pixel, float32, eps = 1e-7; pinned in tests/test_likelihoods.py):

  logit   exact (nats)   clipped (nats)   error
   +10      -10.000         -9.9996       0.0005
   +15      -15.000        -14.844        0.16
   +17      -17.000        -15.942        1.06
   +20      -20.000        -15.942        4.06   (gradient 0)
   +30      -30.000        -15.942       14.06   (gradient 0)

In this set-up (lr 1e-4, 50 epochs of mnist_5k) the decoder's logits stay in
the range where both forms agree, and the two members end within 1e-6 nats
of each other (README table): the clipped form is a latent bug that bites
once a decoder becomes confident (larger learning rates, binarized data,
longer training), not a visible one here.

  python scripts/sweep.py --config experiments/logits_vs_sigmoid.py --workdir runs/logits_vs_sigmoid
"""

import ml_collections

from vae.config import check_variant, default_config


def get_config(variant: str | None = None):
  check_variant(variant, ("quick",))
  config = default_config()
  config.hidden_sizes = (256,)
  config.latent_dim = 5
  config.learning_rate = 1e-4
  config.batch_size = 100
  config.num_epochs = 2 if variant == "quick" else 50
  config.checkpoint_every_epochs = 10
  config.sweep = ml_collections.ConfigDict({"members": (
      {"name": "logits", "bernoulli_form": "logits"},
      {"name": "clipped_probs", "bernoulli_form": "clipped_probs"},
  )})
  return config
