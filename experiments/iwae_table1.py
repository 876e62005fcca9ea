"""Burda, Grosse & Salakhutdinov (2015), Table 1, MNIST, one stochastic
layer: VAE and IWAE trained with k = 1, 5, 50 samples, one variant per cell.

The paper's test NLL (nats, k = 5000 importance-weighted bound on the
10,000 test digits):

  | training objective    | k = 1 | k = 5 | k = 50 |
  |-----------------------|-------|-------|--------|
  | VAE (k-sample ELBO)   | 86.76 | 86.47 | 86.35  |
  | IWAE (k-sample bound) | 86.76 | 85.54 | 84.78  |

The protocol (every cell): 784-200-200-50 with tanh units, a Bernoulli
decoder, the 60,000 official training digits binarized dynamically (a fresh
Bernoulli draw per epoch), batch 20, Adam (beta1 0.9, beta2 0.999, eps
1e-4), 3,280 epochs in stages i = 0..7 of 3^i epochs at learning rate
1e-3 * 10^(-i/7) (9.84 million steps); test NLL by ``scripts/evaluate.py
--k 5000`` (which also reports Burda's active units). Stage boundaries:
epochs 1, 4, 13, 40, 121, 364, 1093, 3280; each is kept as a checkpoint
(``keep_epochs``), so a boundary can be evaluated after the run goes on.

Variants (``--config experiments/iwae_table1.py:VARIANT``): ``vae1``,
``vae5``, ``vae50``, ``iwae5``, ``iwae50`` (one cell each; ``iwae1`` is
``vae1`` bit for bit), ``sweep`` (all five as one sweep, one shape group per
cell, for ``scripts/sweep.py``), and any of them with ``_short``
(``vae5_short``, ``sweep_short``): the first four stages only, 40 epochs
(120,000 steps), the same learning rates as the full protocol's first 40
epochs. ``short`` alone is ``sweep_short`` on the embedded 4,000 digits
with 1 epoch, the test suite's smoke run.

The data: the full MNIST, read offline from the four IDX files in
``--config.manual_dir`` (e.g. ``../shared/data/mnist``); without it TFDS
must have MNIST prepared. Long runs: keep the workdir outside the checkout;
a run checkpoints every 10 epochs (about a minute here) and resumes bit for
bit after any stop.

  python scripts/train.py --config experiments/iwae_table1.py:vae1 \\
      --config.manual_dir=../shared/data/mnist --workdir ~/runs/iwae_table1/vae1
  python scripts/evaluate.py --workdir ~/runs/iwae_table1/vae1 --k 5000
  python scripts/sweep.py --config experiments/iwae_table1.py:sweep_short \\
      --config.manual_dir=../shared/data/mnist --workdir ~/runs/iwae_table1_short

Measured cost (2-core AMD EPYC, AVX2 + FMA, no AVX-512, commit ba54285's
training code, both cores shared with other jobs, so upper bounds): one
full-MNIST epoch (3,000 steps) takes a median 5.4 s for vae1 (6.75 s over
the first 365 epochs of the full protocol), 14.4 s for vae5 and 10.5 s for
iwae5; a ``_short`` cell 249 s (vae1), 575 s (vae5), 545 s (iwae5); the
k = 5000 evaluation of 10,000 test digits 506-813 s. The full protocol at
6.75 s per epoch is 6.2 hours for vae1; the k = 50 cells cost about 10 times
more per epoch. Results: the README's "Experiments" table.
"""

import importlib.util
from pathlib import Path

import ml_collections

from vae.config import check_variant


def paper_config():
  """The protocol, from its one home: experiments/iwae_paper.py (this
  file's neighbour; experiment files are loaded by path, not as a package)."""
  path = Path(__file__).with_name("iwae_paper.py")
  spec = importlib.util.spec_from_file_location("iwae_paper", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()

CELLS = {"vae1": ("vae", 1), "vae5": ("vae", 5), "vae50": ("vae", 50),
         "iwae5": ("iwae", 5), "iwae50": ("iwae", 50)}
STAGE_BOUNDARIES = (1, 4, 13, 40, 121, 364, 1093, 3280)
SHORT_EPOCHS = 40  # stages 0..3
VARIANTS = (tuple(CELLS) + ("sweep",)
            + tuple(f"{v}_short" for v in (*CELLS, "sweep")) + ("short",))


def get_config(variant: str | None = None):
  check_variant(variant, VARIANTS)
  variant = variant or "vae1"
  config = paper_config()
  config.dataset = "mnist"
  config.manual_dir = ""
  config.checkpoint_every_epochs = 10
  config.keep_epochs = STAGE_BOUNDARIES
  cell = variant.removesuffix("_short")
  if variant.endswith("_short") or variant == "short":
    config.num_epochs = SHORT_EPOCHS
  if variant == "short":  # the smoke test: embedded digits, 1 epoch
    cell = "sweep"
    config.dataset = "mnist_5k"
    config.num_epochs = 1
    config.checkpoint_every_epochs = 1
  if cell == "sweep":
    config.sweep = ml_collections.ConfigDict({"members": tuple(
        {"name": name, "objective": objective, "num_samples": k}
        for name, (objective, k) in CELLS.items())})
  else:
    config.objective, config.num_samples = CELLS[cell]
  return config
