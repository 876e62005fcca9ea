"""The run configuration: every field, its default, and its validation.

Experiment files in ``experiments/`` start from :func:`default_config` and
change what they need; every field can then be overridden on the command line
(``--config.beta=2``). :func:`validate` checks a resolved config and raises
:class:`ConfigError` naming the field, the bad value and what is accepted.
The accepted values of every choice field are here too, beside the
defaults: the modules that implement an option import its names from this
module (vae.model.networks its ARCHITECTURES, vae.train.optim its
OPTIMIZERS...), so the config sits below every package and each list of
names has one home. The numerics modes are the one exception:
:mod:`vae.numerics` keeps them as the keys of its flag table, below this
module. Reading a saved config back from a run directory is
:mod:`vae.store.runs`'s.
"""

from __future__ import annotations

import json
import math
from typing import Any

import ml_collections

from vae import inputs, numerics
from vae.errors import ConfigError

# The accepted values of each choice field (one home; see the docstring).
DATASETS = ("mnist_5k", "mnist", "fashion_mnist", "kmnist", "binarized_mnist")
BINARIZE = ("none", "dynamic", "static")
ARCHITECTURES = ("mlp", "conv")
ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "softplus", "leaky_relu", "swish",
               "sigmoid")
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
OBJECTIVES = ("vae", "autoencoder", "iwae")
IWAE_GRADIENTS = ("standard", "dreg")
REDUCTIONS = ("sum", "mean_pixels")
BERNOULLI_FORMS = ("logits", "clipped_probs")
KL_SCHEDULES = ("constant", "linear", "cyclical")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential", "iwae")
ON_NAN = ("stop", "skip")  # a non-finite loss stops the run, or skips the update
NUMERICS = numerics.MODES

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "BERNOULLI_FORMS", "BINARIZE",
    "ConfigError", "DATASETS", "IWAE_GRADIENTS", "KL_SCHEDULES",
    "LIKELIHOODS", "LR_SCHEDULES", "NUMERICS", "OBJECTIVES", "ON_NAN",
    "OPTIMIZERS", "REDUCTIONS", "check_training_memory", "check_variant",
    "config_to_dict", "default_config", "validate", "with_fields",
]


def default_config() -> ml_collections.ConfigDict:
  """All fields with their defaults (a 784-400-20 Bernoulli MLP on mnist_5k)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # everything random derives from jax.random.key(seed)
  c.numerics = "default"  # see vae.numerics: XLA CPU flags of the process

  # Data.
  c.dataset = "mnist_5k"  # one of DATASETS (vae.data.datasets reads them)
  c.data_dir = ""  # TFDS data_dir ("" = TFDS default)
  c.manual_dir = ""  # offline route: directory holding the raw files
  c.binarize = "none"  # "dynamic": fresh Bernoulli draw of pixels every epoch
  c.data_shape = (28, 28, 1)  # filled from the dataset at run time

  # Model.
  c.architecture = "mlp"  # "mlp" | "conv"
  c.hidden_sizes = (400,)  # MLP encoder widths; the decoder mirrors them
  c.conv_features = (32, 64)  # conv encoder channels; the decoder mirrors them
  c.activation = "relu"
  c.batch_norm = False  # MLP: BatchNorm after each hidden Dense layer
  c.decoder_output_activation = "none"  # e.g. "tanh" for a Gaussian mean
  c.latent_dim = 20
  c.likelihood = "bernoulli"  # "bernoulli" | "continuous_bernoulli" | "gaussian"
  c.gaussian_sigma = 1.0  # fixed sigma of the Gaussian likelihood
  c.learn_scale = False  # Gaussian: learn a per-pixel log-scale instead

  # Objective.
  c.objective = "vae"  # "vae" | "autoencoder" (the deterministic baseline) | "iwae"
  c.num_samples = 1  # k posterior draws per example (vae: mean of k ELBOs; iwae: k-sample bound)
  c.iwae_gradient = "standard"  # iwae: "standard" | "dreg" (Tucker et al. 2019)
  c.beta = 1.0  # KL weight (its final value under a schedule)
  c.kl_schedule = "constant"  # "constant" | "linear" | "cyclical"
  c.kl_warmup_epochs = 0.0  # linear: epochs to ramp the KL weight 0 -> beta
  c.kl_cycle_epochs = 10.0  # cyclical: epochs per cycle
  c.kl_cycle_ratio = 0.5  # cyclical: fraction of a cycle spent ramping
  c.free_bits = 0.0  # nats per latent dimension (Kingma et al. 2016); 0: off
  # Pitfall demonstrations (training loss only; reported metrics stay exact):
  c.reduction = "sum"  # "mean_pixels": the BROKEN per-pixel mean (collapse)
  c.bernoulli_form = "logits"  # "clipped_probs": the fragile clipped BCE

  # Optimisation.
  c.num_epochs = 50
  c.batch_size = 128
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.adam_eps = 1e-8
  c.lr_schedule = "constant"
  c.warmup_epochs = 0  # warmup_cosine only
  c.lr_decay_rate = 0.1  # exponential: factor reached at the last step
  c.weight_decay = 0.0  # adamw only
  c.grad_clip_norm = 0.0  # > 0: clip gradients to this global norm
  c.on_nan = "stop"  # non-finite loss: "stop" the run, or "skip" the update
  c.max_skipped_steps = 100  # on_nan="skip": consecutive skips tolerated

  # Evaluation and checkpoints.
  c.eval_batch_size = 1000
  c.keep_checkpoints = 3  # latest N kept (plus the best by test ELBO)
  c.checkpoint_every_epochs = 1
  c.keep_epochs = ()  # epochs whose checkpoints are always kept (e.g. stage boundaries)
  c.eval_k = 0  # sweeps: > 0 adds the IWAE NLL (k draws), active units, MI
  return c


def with_fields(config: ml_collections.ConfigDict | None = None,
                **fields) -> ml_collections.ConfigDict:
  """A copy of ``config`` (default: :func:`default_config`) with ``fields`` set."""
  result = ml_collections.ConfigDict(
      (config if config is not None else default_config()).to_dict())
  for field, value in fields.items():
    result[field] = value
  return result


MAX_SEED = 2**31 - 1


def check_variant(variant: str | None, accepted: tuple[str, ...]) -> None:
  """For experiment files: ``--config file.py:VARIANT`` must be known."""
  if variant is not None and variant not in accepted:
    raise ConfigError(f"config variant {variant!r} is not accepted: one of "
                      f"{accepted} (or none)")


def _fail(field: str, value, accepted: str):
  raise ConfigError(f"config.{field}={value!r} is not accepted: {accepted}")


def _choice(config, field: str, choices) -> None:
  if config[field] not in choices:
    _fail(field, config[field], f"one of {tuple(choices)}")


def _positive_int(config, field: str, minimum: int = 1) -> None:
  value = config[field]
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    _fail(field, value, f"an integer >= {minimum}")


def validate(config: ml_collections.ConfigDict,
             datasets=None) -> ml_collections.ConfigDict:
  """Check a resolved config; raise ConfigError naming the first bad field.

  Args:
    config: the resolved config.
    datasets: accepted dataset names (default: DATASETS).

  Returns:
    ``config`` unchanged, for chaining.
  """
  if datasets is None:
    datasets = DATASETS
  known = set(default_config().keys())
  extra = sorted(set(config.keys()) - known - _experiment_fields(config))
  if extra:
    _fail(extra[0], config[extra[0]], f"a known field; known: {sorted(known)}")
  _positive_int(config, "seed", 0)
  if config.seed > MAX_SEED:  # jax.random.key takes a 32-bit signed seed
    _fail("seed", config.seed, f"an integer in [0, {MAX_SEED}]")
  _choice(config, "dataset", datasets)
  _choice(config, "numerics", NUMERICS)
  _choice(config, "binarize", BINARIZE)
  _choice(config, "architecture", ARCHITECTURES)
  _choice(config, "activation", ACTIVATIONS)
  _choice(config, "likelihood", LIKELIHOODS)
  _choice(config, "optimizer", OPTIMIZERS)
  _choice(config, "lr_schedule", LR_SCHEDULES)
  _choice(config, "objective", OBJECTIVES)
  _choice(config, "kl_schedule", KL_SCHEDULES)
  _choice(config, "iwae_gradient", IWAE_GRADIENTS)
  _choice(config, "on_nan", ON_NAN)
  _choice(config, "reduction", REDUCTIONS)
  _choice(config, "bernoulli_form", BERNOULLI_FORMS)
  _choice(config, "decoder_output_activation",
          ("none",) + ACTIVATIONS)
  if config.bernoulli_form != "logits" and config.likelihood != "bernoulli":
    _fail("bernoulli_form", config.bernoulli_form,
          f"'logits' unless likelihood='bernoulli' (it is {config.likelihood!r})")
  if config.numerics == "portable" and config.architecture != "mlp":
    # Convolutions are library calls whose kernels depend on the processor.
    _fail("numerics", config.numerics,
          f"'default' unless architecture='mlp' (it is "
          f"{config.architecture!r}: convolutions have no portable form)")
  if config.batch_norm and config.architecture != "mlp":
    _fail("batch_norm", config.batch_norm,
          f"False unless architecture='mlp' (it is {config.architecture!r})")
  _positive_int(config, "max_skipped_steps")
  _positive_int(config, "num_samples")
  if config.objective == "autoencoder" and config.num_samples != 1:
    _fail("num_samples", config.num_samples,
          "1 when objective='autoencoder' (it draws nothing)")
  if config.iwae_gradient != "standard" and not (
      config.objective == "iwae" and config.num_samples > 1):
    _fail("iwae_gradient", config.iwae_gradient,
          "'standard' unless objective='iwae' with num_samples > 1 (it is "
          f"{config.objective!r} with num_samples={config.num_samples})")
  if config.objective == "iwae":
    # The bound is log p(x) lower-bounded: a KL weight, free bits or a KL
    # schedule would make it another objective; refused rather than guessed.
    for field, neutral in (("beta", 1.0), ("free_bits", 0.0),
                           ("kl_schedule", "constant"), ("reduction", "sum")):
      if config[field] != neutral:
        _fail(field, config[field], f"{neutral!r} when objective='iwae' (the "
              "importance-weighted bound has no KL weight, free bits, KL "
              "schedule or reduction demonstration)")
  _positive_int(config, "eval_k", 0)
  _positive_int(config, "latent_dim")
  _positive_int(config, "num_epochs")
  _positive_int(config, "batch_size")
  _positive_int(config, "eval_batch_size")
  _positive_int(config, "keep_checkpoints")
  _positive_int(config, "checkpoint_every_epochs")
  if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1
             for e in config.keep_epochs):
    _fail("keep_epochs", config.keep_epochs, "a tuple of epochs >= 1")
  _positive_int(config, "warmup_epochs", 0)
  widths = tuple(config.hidden_sizes)
  if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
    _fail("hidden_sizes", widths,
          "a tuple of positive integers (empty: a linear encoder/decoder)")
  feats = tuple(config.conv_features)
  if not feats or any(not isinstance(f, int) or f < 1 for f in feats):
    _fail("conv_features", feats, "a non-empty tuple of positive integers")
  for field in ("beta", "weight_decay", "grad_clip_norm", "free_bits",
                "kl_warmup_epochs"):
    if not (config[field] >= 0 and math.isfinite(config[field])):
      _fail(field, config[field], "a finite number >= 0")
  for field in ("learning_rate", "gaussian_sigma", "kl_cycle_epochs",
                "adam_eps"):
    if not (config[field] > 0 and math.isfinite(config[field])):
      _fail(field, config[field], "a finite number > 0")
  if not 0 < config.lr_decay_rate <= 1:
    _fail("lr_decay_rate", config.lr_decay_rate, "a number in (0, 1]")
  if not 0 < config.kl_cycle_ratio <= 1:
    _fail("kl_cycle_ratio", config.kl_cycle_ratio, "a number in (0, 1]")
  if config.kl_schedule == "linear" and not config.kl_warmup_epochs > 0:
    _fail("kl_warmup_epochs", config.kl_warmup_epochs,
          "a number > 0 when kl_schedule='linear'")
  if config.learn_scale and config.likelihood != "gaussian":
    _fail("learn_scale", config.learn_scale,
          f"False unless likelihood='gaussian' (it is {config.likelihood!r})")
  if config.warmup_epochs and config.lr_schedule != "warmup_cosine":
    _fail("warmup_epochs", config.warmup_epochs,
          f"0 unless lr_schedule='warmup_cosine' (it is {config.lr_schedule!r})")
  if config.warmup_epochs >= config.num_epochs > 0 and config.warmup_epochs:
    _fail("warmup_epochs", config.warmup_epochs,
          f"fewer than num_epochs={config.num_epochs}")
  if config.weight_decay and config.optimizer != "adamw":
    _fail("weight_decay", config.weight_decay,
          f"0 unless optimizer='adamw' (it is {config.optimizer!r})")
  return config


# Bytes one training step holds per value of its decoder's output rows
# ([batch_size * num_samples, prod(data_shape)] float32 values: the logits,
# the per-pixel log-likelihood terms, their gradients and XLA's temporaries).
# Measured by peak RSS, 784-400-20 at batch 128: 8.5 (num_samples=256) and
# 8.7 (num_samples=1024) times one float32 array of those rows.
TRAINING_BYTES_PER_DECODER_VALUE = 9 * 4


def training_memory_bytes(configs: list[ml_collections.ConfigDict]) -> int:
  """Estimated bytes of one training step of ``configs`` trained together
  (a group): the sum over members of batch_size x num_samples x
  prod(data_shape) x TRAINING_BYTES_PER_DECODER_VALUE."""
  return sum(c.batch_size * c.num_samples * math.prod(c.data_shape)
             * TRAINING_BYTES_PER_DECODER_VALUE for c in configs)


def check_training_memory(configs: list[ml_collections.ConfigDict],
                          available: int | None = None) -> None:
  """Refuse, before anything is compiled or written, members whose training
  step cannot fit in the host's available memory
  (:func:`vae.inputs.check_memory`; ``available`` overrides it).

  Raises:
    ConfigError: naming num_samples, batch_size, the estimate and the
      memory available.
  """
  first = configs[0]
  members = f" for {len(configs)} members" if len(configs) > 1 else ""
  inputs.check_memory(
      training_memory_bytes(configs),
      f"config.num_samples={first.num_samples} with config.batch_size="
      f"{first.batch_size}: one training step{members} (batch_size x "
      f"num_samples x {math.prod(first.data_shape)} values x 4 bytes x "
      f"{TRAINING_BYTES_PER_DECODER_VALUE // 4}: the decoder's rows, their "
      "gradients and temporaries)",
      "lower num_samples or batch_size", available)


def _experiment_fields(config) -> set[str]:
  """Fields an experiment may add for its own bookkeeping (e.g. ``quick``)."""
  return {"quick", "name", "description", "sweep"} & set(config.keys())


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-ready dict of the config (tuples become lists): what
  ``config.json`` holds."""
  return json.loads(config.to_json())
