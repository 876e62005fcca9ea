"""Training-speed benchmark, with its own matrix-product floor measured alongside.

:func:`epoch_benchmark` times whole compiled epochs of :func:`vae.train.train_epoch`
and, in the same process, the *floor*: every ``dot_general`` of one train step
(read off the step's jaxpr, so forward and backward products are exactly the
ones training runs), each timed alone at its own shapes as a compiled scan over
one epoch's worth of distinct inputs, summed. ``epoch_over_floor`` is then how
much the rest of the step (element-wise work, the optimizer, the loop) costs.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae import config as config_lib
from vae import data, train


def bench_config(hidden=(400,), latent_dim=20, batch_size=128):
  """The benchmark model: a Bernoulli MLP VAE, Adam, constant learning rate."""
  config = config_lib.default_config()
  config.hidden_sizes = tuple(hidden)
  config.latent_dim = latent_dim
  config.batch_size = batch_size
  return config


def bench_images(num_examples: int) -> np.ndarray:
  """``[num_examples, 28, 28, 1]`` real digits: mnist_5k (train then test)
  repeated as often as needed. Timing does not depend on the pixel values."""
  ds = data.load_dataset("mnist_5k")
  pool = np.concatenate([ds.train_images, ds.test_images])
  reps = -(-num_examples // pool.shape[0])
  return np.concatenate([pool] * reps)[:num_examples]


def _dot_generals(jaxpr) -> list[tuple[Any, Any, Any]]:
  """(lhs aval, rhs aval, params) of every dot_general in a jaxpr, recursively."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append((eqn.invars[0].aval, eqn.invars[1].aval, eqn.params))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found.extend(_dot_generals(inner))
  return found


def _time(fn, *args, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return times


def matmul_floor(step_fn, step_args, num_steps: int, repeats: int = 7
                 ) -> tuple[float, list[dict[str, Any]]]:
  """Seconds per epoch spent in the step's matrix products, timed alone.

  Args:
    step_fn: one train step (un-jitted is fine).
    step_args: arguments to trace it with.
    num_steps: steps per epoch.
    repeats: timing repeats per product (the minimum is kept).

  Returns:
    (floor seconds per epoch, one dict per product with shapes and seconds).
  """
  closed = jax.make_jaxpr(step_fn)(*step_args)
  products = []
  key = jax.random.key(0)
  for lhs, rhs, params in _dot_generals(closed.jaxpr):
    key, lhs_key, rhs_key = jax.random.split(key, 3)
    lhs_stack = jax.random.normal(lhs_key, (num_steps,) + lhs.shape, lhs.dtype)
    rhs_value = jax.random.normal(rhs_key, rhs.shape, rhs.dtype)

    def epoch_of_products(lhs_stack, rhs_value, params=params):
      def body(carry, lhs_value):
        return carry, jax.lax.dot_general(
            lhs_value, rhs_value, params["dimension_numbers"],
            preferred_element_type=params.get("preferred_element_type"))
      return jax.lax.scan(body, 0, lhs_stack)[1]

    fn = jax.jit(epoch_of_products)
    jax.block_until_ready(fn(lhs_stack, rhs_value))  # compile
    seconds = min(_time(fn, lhs_stack, rhs_value, repeats=repeats))
    products.append({"lhs": list(lhs.shape), "rhs": list(rhs.shape),
                     "contracting": [list(d) for d in params["dimension_numbers"][0]],
                     "batch": [list(d) for d in params["dimension_numbers"][1]],
                     "epoch_s": seconds})
  return sum(p["epoch_s"] for p in products), products


def _timed_epochs(config, images, num_members: int, epochs: int, devices=None):
  """(compile seconds, per-epoch seconds, trainer, state, hyper, keys) of a
  group of ``num_members`` stacked runs (seeds 0..M-1) of ``config``, its
  member axis sharded over ``devices`` as a sweep shards it."""
  group = train.start_group(
      [config_lib.with_fields(config, seed=config.seed + i)
       for i in range(num_members)], images.shape[0], devices)
  trainer, state, keys, hyper = group.trainer, group.state, group.keys, group.hyper
  images = train.place(images, group.replicated)
  t0 = time.perf_counter()
  epoch_args = (state, images, 1, keys.train, hyper)
  compiled = (trainer.train_epoch.compile(*epoch_args)
              if isinstance(trainer.train_epoch, train.PerDevice)
              else trainer.train_epoch.lower(*epoch_args).compile())
  compile_s = time.perf_counter() - t0
  state, _ = compiled(state, images, 1, keys.train, hyper)  # warm-up
  jax.block_until_ready(state)
  epoch_s = []
  for epoch in range(2, epochs + 2):
    t0 = time.perf_counter()
    state, metrics = compiled(state, images, epoch, keys.train, hyper)
    jax.block_until_ready((state, metrics))
    epoch_s.append(time.perf_counter() - t0)
  return compile_s, epoch_s, trainer, state, hyper, keys


def _model_name(config) -> str:
  widths = "-".join(str(w) for w in (784, *config.hidden_sizes, config.latent_dim))
  return f"{widths} {config.likelihood} {config.architecture}"


def epoch_benchmark(config=None, num_examples: int = 10_000, epochs: int = 7
                    ) -> dict[str, Any]:
  """Compile time, epoch times and the matmul floor for one run of a config
  (the program ``scripts/train.py`` runs: a member axis of one)."""
  config = config if config is not None else bench_config()
  config_lib.validate(config)
  images = jnp.asarray(bench_images(num_examples))
  compile_s, epoch_s, trainer, state, hyper, keys = _timed_epochs(
      config, images, 1, epochs)
  num_steps = num_examples // config.batch_size
  x = images[: config.batch_size]
  # The step as the epoch runs it: vmapped over a member axis of one, so the
  # products carry that batch dimension and use the same kernels.
  step = jax.vmap(lambda s, x, k, h: train.train_step(
      s, x, k, h, 1.0, model=trainer.model, optimizer=trainer.optimizer),
                  in_axes=(0, None, 0, 0))
  floor_s, products = matmul_floor(step, (state, x, keys.train, hyper),
                                   num_steps)
  median = statistics.median(epoch_s)
  return {
      "model": _model_name(config),
      "batch_size": config.batch_size,
      "num_examples": num_examples,
      "steps_per_epoch": num_steps,
      "compile_s": compile_s,
      "epoch_s": {"min": min(epoch_s), "median": median, "max": max(epoch_s),
                  "count": len(epoch_s)},
      "examples_per_s": num_steps * config.batch_size / median,
      "floor_s": floor_s,
      "epoch_over_floor": median / floor_s,
      "floor_products": products,
      "backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
      "jax": jax.__version__,
  }


def sweep_benchmark(num_members: int, config=None, num_examples: int = 10_000,
                    epochs: int = 5) -> dict[str, Any]:
  """One epoch of a ``num_members`` sweep over one epoch of a single member,
  same model and data, both measured here (medians over ``epochs``). The
  sweep's member axis is sharded over every device, as ``scripts/sweep.py``
  shards it; the single member runs on one, as ``scripts/train.py`` runs it."""
  config = config if config is not None else bench_config()
  config_lib.validate(config)
  images = jnp.asarray(bench_images(num_examples))
  _, single, *_ = _timed_epochs(config, images, 1, epochs)
  devices = train.member_devices(num_members, jax.devices())
  compile_s, swept, *_ = _timed_epochs(config, images, num_members, epochs,
                                       devices)
  single_s, sweep_s = statistics.median(single), statistics.median(swept)
  return {
      "model": _model_name(config),
      "batch_size": config.batch_size,
      "num_examples": num_examples,
      "members": num_members,
      "single_epoch_s": single_s,
      "sweep_epoch_s": sweep_s,
      "sweep_over_single": sweep_s / single_s,
      "sweep_compile_s": compile_s,
      "sweep_devices": 1 if devices is None else len(devices),
      "backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
  }
