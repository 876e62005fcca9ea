"""Every benchmark: training epochs and sweeps against their matrix-product
floor, and the importance-weighted bound against its own.

:func:`epoch_benchmark` times whole compiled epochs of
:func:`vae.train.step.train_epoch` and, in the same process, the *floor*: every
``dot_general`` of one train step (read off the step's jaxpr, so forward and
backward products are exactly the ones training runs), each timed alone at its
own shapes as a compiled scan over one epoch's worth of distinct inputs,
summed. ``epoch_over_floor`` is then how much the rest of the step
(element-wise work, the optimizer, the loop) costs. :func:`sweep_benchmark`
compares a sweep's epoch with a single run's; :func:`iwae_benchmark` times
the k-sample bound. Every product is timed by :func:`product_seconds`.
"""

from __future__ import annotations

import collections
import glob
import math
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae import config as config_lib
from vae.model import core, networks as models
from vae.train import devices as devices_lib
from vae.data import preprocess
from vae import numerics as numerics_lib
from vae.train import step, program as trainer_lib
from vae.store import restore
from vae.evals.evaluator import (DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE,
                                 DEFAULT_K, _iwae_batch, iwae_dataset)
from vae.model.bounds import chunk_layout, log_importance_weights
from vae.evals import evaluate
from vae.evals.evaluate import peak_rss_mib
from vae.errors import ConfigError
from vae.model.networks import VAE


def bench_config(hidden=(400,), latent_dim=20, batch_size=128,
                 activation="relu", binarize=None, numerics="default"):
  """The benchmark model: a Bernoulli MLP VAE, Adam, constant learning rate
  (``--hidden 200,200 --latent_dim 50 --batch_size 20 --activation tanh
  --binarize dynamic``: the IWAE paper's model and batch), in numerics mode
  ``numerics`` (the process's flags must be that mode's)."""
  config = config_lib.default_config()
  config.numerics = numerics
  config.hidden_sizes = tuple(hidden)
  config.latent_dim = latent_dim
  config.batch_size = batch_size
  config.activation = activation
  if binarize is not None:
    config.binarize = binarize
  return config


def parse_widths(values) -> tuple[int, ...]:
  """``["200", "200"]`` (a comma-separated flag) -> ``(200, 200)``.

  Raises:
    ConfigError: a width that is not a positive integer, naming the flag.
  """
  try:
    widths = tuple(int(v) for v in values)
  except ValueError:
    widths = ()
  if not widths or any(w < 1 for w in widths):
    raise ConfigError(f"--hidden={','.join(values)!r} is not accepted: "
                      "comma-separated positive integers, e.g. 200,200")
  return widths


def dot_flops(lhs, rhs, params) -> int:
  """Floating-point operations of one ``dot_general`` (2 per multiply-add)."""
  (lhs_contract, _), (lhs_batch, _) = params["dimension_numbers"]
  contracted = math.prod(lhs.shape[d] for d in lhs_contract)
  out = math.prod(lhs.shape) // contracted  # lhs's batch and free dims
  (_, rhs_contract), (_, rhs_batch) = params["dimension_numbers"]
  rhs_free = math.prod(rhs.shape) // math.prod(
      rhs.shape[d] for d in (*rhs_contract, *rhs_batch))
  return 2 * out * contracted * rhs_free


def peak_matmul_flops(size: int = 2048, repeats: int = 7) -> float:
  """The machine's peak float32 matrix-product rate, FLOP/s: the fastest of
  ``repeats`` ``[size, size] @ [size, size]`` products on all cores."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  product = jax.jit(jnp.matmul)
  jax.block_until_ready(product(a, b))  # compile
  return 2 * size**3 / min(time_calls(product, a, b, repeats=repeats))


def model_name(config) -> str:
  """E.g. ``"784-400-20 bernoulli mlp"``: data size, widths, latent size."""
  widths = "-".join(str(w) for w in (math.prod(config.data_shape),
                                     *config.hidden_sizes, config.latent_dim))
  return f"{widths} {config.likelihood} {config.architecture}"


def bench_images(num_examples: int) -> np.ndarray:
  """``[num_examples, 28, 28, 1]`` real digits: mnist_5k (train then test)
  repeated as often as needed. Timing does not depend on the pixel values."""
  ds = preprocess.load_dataset(config_lib.default_config())
  pool = np.concatenate([ds.train_images, ds.test_images])
  reps = -(-num_examples // pool.shape[0])
  return np.concatenate([pool] * reps)[:num_examples]


def dot_generals(jaxpr) -> list[tuple[Any, Any, Any]]:
  """(lhs aval, rhs aval, params) of every dot_general in a jaxpr, recursively."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append((eqn.invars[0].aval, eqn.invars[1].aval, eqn.params))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found.extend(dot_generals(inner))
  return found


def time_calls(fn, *args, repeats: int) -> list[float]:
  """Wall seconds of ``repeats`` calls of ``fn(*args)``, each waited for."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return times


def product_seconds(lhs, rhs, params, *, steps: int, repeats: int = 7
                    ) -> float:
  """Seconds of one ``dot_general`` at these shapes, timed alone: the
  fastest of ``repeats`` runs of a compiled scan over ``steps`` distinct
  left operands, divided by ``steps``.

  Args:
    lhs, rhs: the operands' avals (shape, dtype).
    params: the ``dot_general``'s parameters (dimension numbers...).
    steps: distinct left operands per scan (e.g. the steps of an epoch).
    repeats: timing repeats (the minimum is kept).
  """
  lhs_stack = jax.random.normal(jax.random.key(0), (steps,) + lhs.shape,
                                lhs.dtype)
  rhs_value = jax.random.normal(jax.random.key(1), rhs.shape, rhs.dtype)

  @jax.jit
  def products(lhs_stack, rhs_value):
    def body(carry, lhs_value):
      return carry, jax.lax.dot_general(
          lhs_value, rhs_value, params["dimension_numbers"],
          preferred_element_type=params.get("preferred_element_type"))
    return jax.lax.scan(body, 0, lhs_stack)[1]

  jax.block_until_ready(products(lhs_stack, rhs_value))  # compile
  return min(time_calls(products, lhs_stack, rhs_value,
                        repeats=repeats)) / steps


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
  for lhs, rhs, params in dot_generals(closed.jaxpr):
    seconds = product_seconds(lhs, rhs, params, steps=num_steps,
                              repeats=repeats) * num_steps
    products.append({"lhs": list(lhs.shape), "rhs": list(rhs.shape),
                     "contracting": [list(d) for d in params["dimension_numbers"][0]],
                     "batch": [list(d) for d in params["dimension_numbers"][1]],
                     "epoch_s": seconds})
  return sum(p["epoch_s"] for p in products), products


def _compiled_epoch(config, images, num_members: int = 1, devices=None):
  """(group, images placed for it, compiled epoch, seconds the compilation
  took) of ``num_members`` stacked runs (seeds 0..M-1) of ``config``, the
  member axis sharded over ``devices`` as a sweep shards it."""
  group = trainer_lib.start_group(
      [config_lib.with_fields(config, seed=config.seed + i)
       for i in range(num_members)], images.shape[0], devices)
  images = devices_lib.place(images, group.replicated)
  epoch_args = (group.state, images, 1, group.keys.train, group.settings)
  train_epoch = group.trainer.train_epoch
  t0 = time.perf_counter()
  compiled = (train_epoch.compile(*epoch_args)
              if isinstance(train_epoch, devices_lib.PerDevice)
              else train_epoch.lower(*epoch_args).compile())
  return group, images, compiled, time.perf_counter() - t0


def _timed_epochs(config, images, num_members: int, epochs: int, devices=None):
  """(compile seconds, per-epoch seconds, trainer, state, hyper, keys) of a
  group of ``num_members`` stacked runs (seeds 0..M-1) of ``config``, its
  member axis sharded over ``devices`` as a sweep shards it."""
  group, images, compiled, compile_s = _compiled_epoch(
      config, images, num_members, devices)
  trainer, state, keys, hyper = (group.trainer, group.state, group.keys,
                                 group.settings)
  state, _ = compiled(state, images, 1, keys.train, hyper)  # warm-up
  jax.block_until_ready(state)
  epoch_s = []
  for epoch in range(2, epochs + 2):
    t0 = time.perf_counter()
    state, metrics = compiled(state, images, epoch, keys.train, hyper)
    jax.block_until_ready((state, metrics))
    epoch_s.append(time.perf_counter() - t0)
  return compile_s, epoch_s, trainer, state, hyper, keys


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
  step_fn = jax.vmap(lambda s, x, k, h: step.train_step(
      s, x, k, h, 1.0, model=trainer.model, optimizer=trainer.optimizer),
                  in_axes=(0, None, 0, 0))
  floor_s, products = matmul_floor(step_fn, (state, x, keys.train, hyper),
                                   num_steps)
  step_flops = sum(dot_flops(*d) for d in dot_generals(
      jax.make_jaxpr(step_fn)(state, x, keys.train, hyper).jaxpr))
  peak = peak_matmul_flops()
  hardware_floor_s = step_flops * num_steps / peak
  median = statistics.median(epoch_s)
  return {
      "model": model_name(config),
      "activation": config.activation,
      "binarize": config.binarize,
      "batch_size": config.batch_size,
      "num_examples": num_examples,
      "steps_per_epoch": num_steps,
      "compile_s": compile_s,
      "epoch_s": {"min": min(epoch_s), "median": median, "max": max(epoch_s),
                  "count": len(epoch_s)},
      "ms_per_step": 1e3 * median / num_steps,
      "steps_per_s": num_steps / median,
      "examples_per_s": num_steps * config.batch_size / median,
      "floor_s": floor_s,
      "epoch_over_floor": median / floor_s,
      # The machine's limit: the step's product FLOPs at the peak rate of a
      # large square product (not XLA's speed at the step's own shapes).
      "matmul_flops_per_step": step_flops,
      "peak_matmul_gflops": peak / 1e9,
      "hardware_floor_s": hardware_floor_s,
      "epoch_over_hardware": median / hardware_floor_s,
      "floor_products": products,
      "xla_cpu_threads": numerics_lib.xla_cpu_threads(),
      "backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
      "jax": jax.__version__,
  }


def hlo_op_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Operation name -> (kind, result shape) for every operation a compiled
  module runs (those of the entry and loop computations; the instructions
  inside a fusion are part of it and are not listed). Kind: "product
  (YNNPACK)", "product (XLA)", "YNNPACK fusion" (a YNNPACK kernel with no
  product, e.g. a sum), "element-wise fusion", "loop" or the opcode."""
  instruction = re.compile(
      r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
  computations, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
    if header:
      current = computations.setdefault(header.group(1), [])
    elif current is not None and (m := instruction.match(line)):
      current.append(m.groups())
  fused = {callee for ops in computations.values()
           for _, _, opcode, rest in ops if opcode == "fusion"
           for callee in re.findall(r"calls=%([\w.\-]+)", rest)}
  kinds = {}
  for computation, ops in computations.items():
    if computation in fused:
      continue
    for name, shape, opcode, rest in ops:
      callee = re.search(r"calls=%([\w.\-]+)", rest)
      has_product = callee is not None and any(
          op in ("dot", "convolution") for _, _, op, _ in
          computations.get(callee.group(1), ()))
      if opcode == "fusion" and "__ynn_fusion" in rest:
        kind = "product (YNNPACK)" if has_product else "YNNPACK fusion"
      elif opcode == "fusion" and "__xnn_fusion" in rest:
        kind = "product (XNNPACK)" if has_product else "XNNPACK fusion"
      elif opcode in ("dot", "convolution") or has_product:
        kind = "product (XLA)"
      elif opcode == "fusion":
        kind = "element-wise fusion"
      elif opcode == "while":
        kind = "loop"
      else:
        kind = opcode
      shape = re.sub(r"\{[^}]*\}|/\*[^*]*\*/", "", shape)
      kinds[name] = (kind, shape if len(shape) <= 60 else shape[:57] + "...")
  return kinds


def step_profile(config=None, num_examples: int = 10_000, epochs: int = 3,
                 top: int = 25) -> dict[str, Any]:
  """Per-operation times of the training step, from ``jax.profiler``.

  Traces ``epochs`` compiled epochs (after a warm-up) and sums, per XLA
  operation, the durations the CPU runtime records on any thread (its pool
  and the caller); instructions inside a fusion count as the fusion.
  Times are per step, in microseconds, under the profiler (which slows every
  operation a little: compare shares, not absolute times, with the
  unprofiled ``ms_per_step``). A loop's time includes its body's
  operations, so loops are listed apart and left out of the totals.

  Returns:
    ``ops``: the ``top`` costliest operations (name, kind, shape, us per
    step, calls per step); ``by_kind``: us per step per kind; ``loops``;
    ``ops_us_per_step`` (their sum over every thread) and
    ``profiled_wall_us_per_step``.
  """
  config = config if config is not None else bench_config()
  config_lib.validate(config)
  group, images, compiled, _ = _compiled_epoch(
      config, jnp.asarray(bench_images(num_examples)))
  kinds = hlo_op_kinds(compiled.as_text())
  state, _ = compiled(group.state, images, 1, group.keys.train, group.settings)
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as trace_dir:
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for epoch in range(2, 2 + epochs):
        state, metrics = compiled(state, images, epoch, group.keys.train,
                                  group.settings)
        jax.block_until_ready((state, metrics))
      wall = time.perf_counter() - t0
    trace = jax.profiler.ProfileData.from_file(
        glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                  recursive=True)[0])
  total_ns, calls = collections.Counter(), collections.Counter()
  for plane in trace.planes:
    for line in plane.lines:  # every thread: the pool's and the caller's
      for event in line.events:
        if event.name in kinds:
          total_ns[event.name] += event.duration_ns
          calls[event.name] += 1
  steps = epochs * (num_examples // config.batch_size)
  rows, loops, by_kind = [], [], collections.Counter()
  for name, ns in total_ns.most_common():
    kind, shape = kinds[name]
    row = {"op": name, "kind": kind, "shape": shape,
           "us_per_step": ns / steps / 1e3, "calls_per_step": calls[name] / steps}
    if kind == "loop":
      loops.append(row)
    else:
      rows.append(row)
      by_kind[kind] += row["us_per_step"]
  return {
      "model": model_name(config),
      "batch_size": config.batch_size,
      "steps_profiled": steps,
      "xla_cpu_threads": numerics_lib.xla_cpu_threads(),
      "profiled_wall_us_per_step": wall / steps * 1e6,
      "ops_us_per_step": sum(by_kind.values()),
      "by_kind": dict(by_kind.most_common()),
      "ops": rows[:top],
      "loops": loops,
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
  devices = devices_lib.member_devices(num_members, jax.devices())
  compile_s, swept, *_ = _timed_epochs(config, images, num_members, epochs,
                                       devices)
  single_s, sweep_s = statistics.median(single), statistics.median(swept)
  return {
      "model": model_name(config),
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


def iwae_floor(params, x_batch, *, model: VAE, k: int, num_examples: int,
               chunk_size: int = DEFAULT_CHUNK_SIZE
               ) -> tuple[float, list[dict[str, Any]]]:
  """Seconds the matrix products of :func:`vae.evals.evaluator.iwae_dataset`
  take, timed alone.

  Reads every ``dot_general`` of the encoder (run once per batch) and of one
  chunk of the decoder (run ``num_chunks`` times per batch) from their
  jaxprs, times each alone at its own shapes, and sums them times the number
  of times the bound runs them on ``num_examples`` examples.

  Returns:
    ``(floor seconds, one dict per product with shapes, count and seconds)``.
  """
  batch = x_batch.shape[0]
  chunk, num_chunks = chunk_layout(k, chunk_size)
  num_batches = -(-num_examples // batch)
  posterior = core.encode(params, x_batch, model=model)
  eps = jnp.zeros((batch, chunk, posterior.mean.shape[-1]))
  encoder = jax.make_jaxpr(lambda p, x: core.encode(p, x, model=model))(
      params, x_batch)
  decoder = jax.make_jaxpr(lambda p, x, q, e: log_importance_weights(
      p, x, q, e, model=model))(params, x_batch, posterior, eps)
  products = []
  for jaxpr, count, part in ((encoder, num_batches, "encoder"),
                             (decoder, num_batches * num_chunks, "decoder")):
    for lhs, rhs, prm in dot_generals(jaxpr.jaxpr):
      steps = int(max(4, min(16, 2**26 // max(1, lhs.size * 4))))
      seconds = product_seconds(lhs, rhs, prm, steps=steps)
      products.append({"part": part, "lhs": list(lhs.shape),
                       "rhs": list(rhs.shape), "count": count,
                       "each_s": seconds, "total_s": seconds * count})
  return sum(p["total_s"] for p in products), products


def iwae_benchmark(workdir: str | Path | None = None, *, k: int = DEFAULT_K,
                   num_examples: int = 1000,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, seed: int = 0,
                   repeats: int = 1,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Seconds for the k-sample bound over ``num_examples`` images, and its floor.

  Times ``repeats`` passes of :func:`vae.evals.evaluator.iwae_dataset`
  (after compiling on one batch; the fastest is kept) and, in the same
  process, :func:`iwae_floor`: the same matrix products timed alone
  (fastest of 7). ``ratio`` = seconds /
  floor_s: what the rest (sampling, the likelihood's element-wise work, the
  logsumexp, the loop) costs on top. The 1-minute load averages before and
  after are recorded: on a shared machine other processes inflate a single
  long pass more than the floor's fastest-of-7, and so the ratio.

  Args:
    workdir: a run to benchmark (its best checkpoint and test images, repeated
      if fewer than ``num_examples``); None: a freshly initialised 784-400-20
      Bernoulli MLP (vae.train.bench.bench_config) on mnist_5k's 1,000 test images
      (timing does not depend on the parameter values).
    k, num_examples, batch_size, chunk_size, seed: as in :func:`evaluate_run`.
    log: called with progress messages.

  Returns:
    ``model``, ``k``, ``num_examples``, ``batch_size``, ``chunk_size``,
    ``compile_s``, ``seconds``, ``samples_per_s``, ``floor_s``, ``ratio``,
    ``floor_products``, ``peak_rss_mib``, ``backend``, ``devices``, ``jax``.
  """
  log = log or (lambda s: None)
  if workdir is None:
    config = bench_config()
    model = models.build_model(config)
    params = models.init_params(model, jax.random.key(seed), config.data_shape)
    images = preprocess.load_dataset(config).test_images
  else:
    run = restore.load_run(workdir)
    config, model, params = run.config, run.model, run.params
    images, _ = evaluate.eval_images(config)
  reps = -(-num_examples // images.shape[0])
  images = np.concatenate([images] * reps)[:num_examples]
  key = jax.random.key(seed)
  batch = min(batch_size, num_examples)
  chunk, _ = chunk_layout(k, chunk_size)

  t0 = time.perf_counter()
  jax.block_until_ready(_iwae_batch(params, images[:batch], key, jnp.int32(0),
                                    k=k, model=model, chunk_size=chunk))
  compile_s = time.perf_counter() - t0
  log(f"compiled and ran one batch in {compile_s:.1f} s; timing "
      f"{num_examples} examples x k={k}")
  load_before = os.getloadavg()[0]
  passes = []
  for _ in range(max(1, int(repeats))):
    t0 = time.perf_counter()
    iwae_dataset(params, images, key, k, model=model, batch_size=batch,
                 chunk_size=chunk)
    passes.append(time.perf_counter() - t0)
    log(f"{passes[-1]:.1f} s")
  seconds = min(passes)
  log("timing the matrix products alone")
  floor_s, products = iwae_floor(params, images[:batch], model=model, k=k,
                                 num_examples=num_examples, chunk_size=chunk)
  return {
      "model": model_name(config),
      "k": int(k),
      "num_examples": int(num_examples),
      "batch_size": int(batch),
      "chunk_size": int(chunk),
      "compile_s": compile_s,
      "seconds": seconds,
      "pass_s": passes,
      "samples_per_s": num_examples * k / seconds,
      "floor_s": floor_s,
      "ratio": seconds / floor_s,
      "floor_products": products,
      "peak_rss_mib": peak_rss_mib(),
      "loadavg_1min": [load_before, os.getloadavg()[0]],
      "cpu_count": os.cpu_count(),
      "backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
      "jax": jax.__version__,
  }
