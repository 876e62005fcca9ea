"""Flax Linen encoders and decoders: the one place where architectures live.

Modules here hold no state and draw no random numbers. The encoder maps images
``[..., H, W, C]`` to the posterior's ``(mean, logvar)``, each
``[..., latent_dim]``; the decoder maps ``z`` ``[..., latent_dim]`` to the
likelihood's natural parameters (see :mod:`vae.model.likelihoods`). Sampling
lives in :mod:`vae.model.core`, so ``decode(encode(x).mean)`` is the whole
deterministic path. Every dense layer is :class:`vae.model.dense.Dense`
(flax's, with member-count-independent gradients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae.config import ACTIVATIONS, ARCHITECTURES
from vae.model import likelihoods
from vae.model.dense import Dense


def hidden_layer(h: jax.Array, width: int, activation: str, batch_norm: bool,
                 train: bool, portable_products: bool = False) -> jax.Array:
  """Dense -> (BatchNorm) -> activation. BatchNorm normalises with the batch's
  statistics and updates its running averages when ``train``; otherwise it
  uses the running averages (the ``batch_stats`` collection)."""
  h = Dense(width, portable_products=portable_products)(h)
  if batch_norm:
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
  return activation_fn(activation)(h)


def activation_fn(name: str):
  """The activation called ``name`` (one of ACTIVATIONS)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r} is not known; accepted: {ACTIVATIONS}")
  return getattr(jax.nn, name)


class MLPEncoder(nn.Module):
  """Flatten, hidden Dense layers, then one Dense(2 * latent_dim) head.

  The mean and log-variance share one head matrix (split afterwards): one
  matrix product instead of two.
  """

  hidden_sizes: Sequence[int]
  latent_dim: int
  activation: str = "relu"
  batch_norm: bool = False
  portable_products: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    h = x.reshape(x.shape[:-3] + (-1,))
    for width in self.hidden_sizes:
      h = hidden_layer(h, width, self.activation, self.batch_norm, train,
                       self.portable_products)
    mean, logvar = jnp.split(Dense(
        2 * self.latent_dim, name="head",
        portable_products=self.portable_products)(h), 2, -1)
    return mean, logvar


class MLPDecoder(nn.Module):
  """Hidden Dense layers, then Dense(H * W * C * out_per_pixel), reshaped."""

  hidden_sizes: Sequence[int]
  data_shape: tuple[int, int, int]
  out_per_pixel: int = 1
  activation: str = "relu"
  batch_norm: bool = False
  output_activation: str = "none"
  portable_products: bool = False

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    hidden = z
    for width in self.hidden_sizes:
      hidden = hidden_layer(hidden, width, self.activation, self.batch_norm,
                            train, self.portable_products)
    height, width, channels = self.data_shape
    out = Dense(height * width * channels * self.out_per_pixel,
                name="head", portable_products=self.portable_products)(hidden)
    if self.output_activation != "none":
      out = activation_fn(self.output_activation)(out)
    return out.reshape(z.shape[:-1] +
                       (height, width, channels * self.out_per_pixel))


class ConvEncoder(nn.Module):
  """Strided 3x3 convolutions (28 -> 14 -> 7), flatten, Dense head."""

  features: Sequence[int] = (32, 64)
  latent_dim: int = 16
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    del train  # no batch-dependent layers
    act = activation_fn(self.activation)
    batch_shape = x.shape[:-3]
    h = x.reshape((-1,) + x.shape[-3:])
    for f in self.features:
      h = act(nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME")(h))
    h = h.reshape(h.shape[0], -1)
    mean, logvar = jnp.split(Dense(2 * self.latent_dim, name="head")(h), 2, -1)
    return mean.reshape(batch_shape + mean.shape[-1:]), logvar.reshape(
        batch_shape + logvar.shape[-1:])


class ConvDecoder(nn.Module):
  """Dense to a (H/2^k, W/2^k, features[-1]) map, transposed convolutions up,
  then a 3x3 convolution to ``C * out_per_pixel`` channels."""

  data_shape: tuple[int, int, int]
  features: Sequence[int] = (64, 32)
  out_per_pixel: int = 1
  activation: str = "relu"

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    del train  # no batch-dependent layers
    act = activation_fn(self.activation)
    height, width, channels = self.data_shape
    scale = 2 ** len(self.features)
    if height % scale or width % scale:
      raise ValueError(
          f"ConvDecoder: data_shape {self.data_shape} is not divisible by "
          f"2**len(features) = {scale}")
    batch_shape = z.shape[:-1]
    h = z.reshape(-1, z.shape[-1])
    h = act(Dense(height // scale * width // scale * self.features[0])(h))
    h = h.reshape(-1, height // scale, width // scale, self.features[0])
    for f in self.features:
      h = act(nn.ConvTranspose(f, (3, 3), strides=(2, 2), padding="SAME")(h))
    out = nn.Conv(channels * self.out_per_pixel, (3, 3), padding="SAME",
                  name="head")(h)
    return out.reshape(batch_shape + out.shape[1:])


class VAE(nn.Module):
  """An encoder, a decoder and the likelihood their output parameterises.

  A static description (hashable, so it can be a ``jit`` static argument);
  the parameters live outside, in the pytree ``init`` returns. Use it through
  :func:`vae.model.core.encode` / :func:`vae.model.core.decode`, which take ``params``.

  Attributes:
    encoder: module mapping ``[..., H, W, C]`` to ``(mean, logvar)``.
    decoder: module mapping ``[..., latent_dim]`` to raw outputs
      ``[..., H, W, C * out_per_pixel]``.
    likelihood: one of :data:`vae.config.LIKELIHOODS`.
    gaussian_sigma: fixed standard deviation for ``gaussian`` when
      ``learn_scale`` is False.
    learn_scale: ``gaussian`` only: the decoder outputs a per-pixel log-scale.
  """

  encoder: nn.Module
  decoder: nn.Module
  likelihood: str = "bernoulli"
  gaussian_sigma: float = 1.0
  learn_scale: bool = False

  def encode(self, x: jax.Array, train: bool = False
             ) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x, train)

  def decode(self, z: jax.Array, train: bool = False
             ) -> likelihoods.NaturalParams:
    out = self.decoder(z, train)
    if self.likelihood != "gaussian":
      return out
    if self.learn_scale:
      mean, log_scale = jnp.split(out, 2, axis=-1)
      return likelihoods.GaussianParams(mean, log_scale)
    return likelihoods.GaussianParams(
        out, jnp.asarray(math.log(self.gaussian_sigma), out.dtype))

  def __call__(self, x: jax.Array) -> likelihoods.NaturalParams:
    """Encode then decode the posterior mean (used to create parameters)."""
    mean, _ = self.encode(x)
    return self.decode(mean)


def out_per_pixel(likelihood: str, learn_scale: bool) -> int:
  """Decoder outputs per data value: 2 for a learned Gaussian scale, else 1."""
  return 2 if likelihood == "gaussian" and learn_scale else 1


def build_model(config) -> VAE:
  """The VAE a config describes (fields: architecture, hidden_sizes,
  conv_features, activation, batch_norm, decoder_output_activation,
  latent_dim, likelihood, gaussian_sigma, learn_scale, data_shape, and
  numerics: "portable" writes the MLP's products in their portable form)."""
  data_shape = tuple(config.data_shape)
  k = out_per_pixel(config.likelihood, config.learn_scale)
  if config.architecture == "mlp":
    hidden = tuple(config.hidden_sizes)
    portable = config.numerics == "portable"
    encoder = MLPEncoder(hidden, config.latent_dim, config.activation,
                         config.batch_norm, portable)
    decoder = MLPDecoder(hidden[::-1], data_shape, k, config.activation,
                         config.batch_norm, config.decoder_output_activation,
                         portable)
  elif config.architecture == "conv":
    feats = tuple(config.conv_features)
    encoder = ConvEncoder(feats, config.latent_dim, config.activation)
    decoder = ConvDecoder(data_shape, feats[::-1], k, config.activation)
  else:
    raise ValueError(f"architecture={config.architecture!r} is not known; "
                     f"accepted: {ARCHITECTURES}")
  return VAE(encoder, decoder, config.likelihood, float(config.gaussian_sigma),
             bool(config.learn_scale))


def init_params(model: VAE, key: jax.Array, data_shape: Sequence[int]):
  """Fresh parameters for ``model``: a plain pytree (the ``params`` collection).

  For a model with batch normalisation this is ``{"params": ...,
  "batch_stats": ...}`` (the two collections); the functions of
  :mod:`vae.model.core` accept either form.
  """
  dummy = jnp.zeros((2,) + tuple(data_shape), jnp.float32)
  variables = model.init(key, dummy)
  if "batch_stats" in variables:
    return {"params": variables["params"],
            "batch_stats": variables["batch_stats"]}
  return variables["params"]
