"""Benchmark training speed; prints JSON.

  python scripts/bench.py                     # one epoch vs its matmul floor: 784-400-20, batch 128, 10,000 examples
  python scripts/bench.py --sweep 16          # a 16-member sweep epoch / a single-member epoch, same model and data
  python scripts/bench.py --sweep 16 --hidden 64 --latent_dim 2 --batch_size 32
  python scripts/bench.py --hidden 200,200 --latent_dim 50 --batch_size 20 --activation tanh --binarize dynamic --num_examples 6000
  python scripts/bench.py ... --profile 25    # the step's 25 costliest XLA operations (jax.profiler), us per step

epoch_over_floor: the epoch against XLA's own products timed alone;
epoch_over_hardware: against the step's product FLOPs at the machine's peak
float32 product rate (2048^3, best of 7, all cores), measured in the run.
"""

import json

from absl import flags

from vae.train import bench, devices
from vae import cli, errors, numerics

_HIDDEN = flags.DEFINE_list("hidden", ["400"], "MLP hidden widths.")
_LATENT = flags.DEFINE_integer("latent_dim", 20, "Latent size.")
_ACTIVATION = flags.DEFINE_string("activation", "relu", "Hidden units' activation (relu, tanh, ...).")
_BINARIZE = flags.DEFINE_string("binarize", None, "Binarisation (none, static, dynamic); default: the config's.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_EXAMPLES = flags.DEFINE_integer("num_examples", 10_000, "Examples per epoch.")
_EPOCHS = flags.DEFINE_integer("epochs", 7, "Epochs timed after compilation (>= 5).")
_PRODUCTS = flags.DEFINE_bool("show_products", False, "Include each product's timing.")
_PROFILE = flags.DEFINE_integer(
    "profile", 0, "If > 0: profile the step instead (jax.profiler) and list "
    "its this many costliest operations, with the time per kind.")
_SWEEP = flags.DEFINE_integer("sweep", 0, "If > 0: members of the sweep to time "
                              "against a single member.")
_NUMERICS = flags.DEFINE_enum(
    "numerics", "default", numerics.MODES,
    "Numerics mode of the process (see vae/numerics.py), as config.numerics.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "CPU devices to expose (0: one per core); a sweep's "
    "member axis is sharded over them.")


def main(argv):
  del argv
  with cli.user_errors():
    numerics.configure(_NUMERICS.value)
    devices.use_cpu_cores_as_devices(_CPU_DEVICES.value)
    config = bench.bench_config(bench.parse_widths(_HIDDEN.value),
                                _LATENT.value, _BATCH.value, _ACTIVATION.value,
                                _BINARIZE.value, _NUMERICS.value)
    if _PROFILE.value < 0:
      raise errors.ConfigError(
          f"--profile={_PROFILE.value} is not accepted: 0 (off) or how many "
          "operations to list")
    if _PROFILE.value > 0:
      result = bench.step_profile(config, _EXAMPLES.value, top=_PROFILE.value)
    elif _SWEEP.value > 0:
      result = bench.sweep_benchmark(_SWEEP.value, config, _EXAMPLES.value,
                                     max(5, _EPOCHS.value))
    else:
      result = bench.epoch_benchmark(config, _EXAMPLES.value, max(5, _EPOCHS.value))
      if not _PRODUCTS.value:
        result.pop("floor_products")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  cli.run(main)
