"""Benchmark one training epoch against the matrix-product floor; prints JSON.

  python scripts/bench.py                     # 784-400-20 Bernoulli MLP, batch 128, 10,000 examples
  python scripts/bench.py --hidden 64 --latent_dim 2 --batch_size 32
"""

import json

from absl import app, flags

from vae import bench, cli

_HIDDEN = flags.DEFINE_list("hidden", ["400"], "MLP hidden widths.")
_LATENT = flags.DEFINE_integer("latent_dim", 20, "Latent size.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_EXAMPLES = flags.DEFINE_integer("num_examples", 10_000, "Examples per epoch.")
_EPOCHS = flags.DEFINE_integer("epochs", 7, "Epochs timed after compilation (>= 5).")
_PRODUCTS = flags.DEFINE_bool("show_products", False, "Include each product's timing.")


def main(argv):
  del argv
  with cli.user_errors():
    config = bench.bench_config([int(w) for w in _HIDDEN.value], _LATENT.value,
                                _BATCH.value)
    result = bench.epoch_benchmark(config, _EXAMPLES.value, max(5, _EPOCHS.value))
  if not _PRODUCTS.value:
    result.pop("floor_products")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
