"""The bits of short portable-mode training runs, as sha256 digests (JSON).

Run by tests/test_portable.py natively and under qemu-user's emulated
processors (other instruction sets, other reported caches); every digest
must agree. It covers each kind of operation a run is made of: the data
order and dynamic binarisation draws, forward products and both gradient
products of every layer (relu and tanh MLPs, one and two hidden layers),
the bias gradients, the one-sample ELBO, the k-sample VAE objective, IWAE
with DReG gradients, Adam with its learning-rate schedule, a vmapped
2-member group against its member trained alone, the per-epoch test ELBO
terms and the k-sample importance-weighted bound of the evaluation.

``control`` digests are library products that portable mode does not use
(Eigen's, contracted over the rows): they are expected to differ between
processors, which shows the emulation reaches other code paths.

  python tests/portable_probe.py            # prints the JSON
"""

import hashlib
import json
import os
import sys

from vae import numerics

numerics.configure("portable")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the numerics flags)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vae import config as config_lib  # noqa: E402
from vae.evals import evaluator  # noqa: E402
from vae.train import program as trainer, state  # noqa: E402

CASES = {
    "relu_b32": dict(hidden_sizes=(64,), latent_dim=8, batch_size=32),
    "tanh2_dynamic_b20": dict(hidden_sizes=(48, 32), latent_dim=6,
                              batch_size=20, activation="tanh",
                              binarize="dynamic", adam_eps=1e-4,
                              lr_schedule="iwae", num_epochs=3),
    "vae_k2": dict(hidden_sizes=(32,), latent_dim=4, batch_size=16,
                   num_samples=2),
    "iwae_k3_dreg": dict(hidden_sizes=(32,), latent_dim=4, batch_size=16,
                         objective="iwae", num_samples=3,
                         iwae_gradient="dreg"),
}


def digest(tree) -> str:
  leaves = jax.tree_util.tree_leaves(jax.device_get(tree))
  return hashlib.sha256(b"".join(np.asarray(x).tobytes()
                                 for x in leaves)).hexdigest()[:16]


def main() -> dict:
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(192, 28, 28, 1)).astype(np.float32))
  test_images = images[:40]
  out = {}
  for name, fields in CASES.items():
    config = config_lib.with_fields(numerics="portable", **fields)
    group = trainer.start_group([config], images.shape[0])
    params, terms = group.state, None
    for epoch in (1, 2):
      params, terms = group.trainer.train_epoch(
          params, images, epoch, group.keys.train, group.settings)
    out[f"{name}/params"] = digest(params.params)
    out[f"{name}/adam_state"] = digest(params.opt_state)
    out[f"{name}/train_terms"] = digest(terms)
    out[f"{name}/test_elbo_terms"] = digest(group.trainer.evaluation_terms(
        params.variables(), test_images, group.keys.eval))
  # The evaluation's k-sample bound: two chunks of draws, a padded batch.
  config = config_lib.with_fields(numerics="portable", **CASES["relu_b32"])
  group = trainer.start_group([config], images.shape[0])
  iwae = evaluator.iwae_dataset(state.unstack(group.state.params, 0),
                                np.asarray(test_images[:30]),
                                jax.random.key(7), 120,
                                model=group.trainer.model, batch_size=8)
  out["iwae_bound_k120"] = digest(iwae)
  # A vmapped group of two members and the second member alone.
  pair = [config_lib.with_fields(config, seed=0),
          config_lib.with_fields(config, seed=1, beta=2.0)]
  for label, members, index in (("pair", pair, 1), ("alone", pair[1:], 0)):
    g = trainer.start_group(members, images.shape[0])
    s, _ = g.trainer.train_epoch(g.state, images, 1, g.keys.train, g.settings)
    out[f"group_{label}/seed1_beta2_params"] = digest(
        state.unstack(s.params, index))
  # Controls: library products (contracted over rows), not used here.
  for m, k, n in ((128, 784, 400), (1000, 200, 784), (20, 784, 200)):
    a = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32))
    b = jnp.asarray(rng.standard_normal((m, n)).astype(np.float32))
    out[f"control/rows_product_{m}x{k}x{n}"] = digest(jax.jit(
        lambda a, b: jax.lax.dot_general(a, b, (((0,), (0,)), ((), ()))))(a, b))
  return out


if __name__ == "__main__":
  json.dump(main(), sys.stdout, indent=1, sort_keys=True)
  print()
