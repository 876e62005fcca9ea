"""Functional, reproducible variational autoencoders in JAX/Flax.

The core API: pure functions of explicit parameters and explicit PRNG keys.

  posterior = vae.encode(params, x, model=model)      # no key, no draw
  z = vae.sample(key, posterior)                      # the only random draw
  logits = vae.decode(params, z, model=model)         # natural parameters
  images = vae.reconstruct(params, x, model=model)    # deterministic path
  images = vae.reconstruct(params, x, key, model=model)  # stochastic path
  loss, metrics = vae.elbo(params, x, key, model=model, beta=1.0)
"""

from vae.model.core import Posterior, decode, elbo, elbo_terms, encode, kl_per_dim, reconstruct, sample
from vae.model.networks import VAE, build_model, init_params

__all__ = [
    "Posterior", "VAE", "build_model", "decode", "elbo", "elbo_terms", "encode",
    "init_params", "kl_per_dim", "reconstruct", "sample",
]
