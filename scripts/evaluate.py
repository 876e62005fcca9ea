"""Evaluate a trained run, or every run of a sweep directory; print a table.

  python scripts/evaluate.py --workdir runs/quickstart              # k = 5000, the run's test set
  python scripts/evaluate.py --workdir runs/quickstart --k 100      # quicker, looser
  python scripts/evaluate.py --workdir runs/quickstart \\
      --data ../shared/data/mnist/t10k-images-idx3-ubyte.gz         # external images
  python scripts/evaluate.py --workdir runs/my_sweep                # one row per member
  python scripts/evaluate.py --bench [--workdir runs/quickstart]    # timing vs matmul floor

Reports the importance-weighted NLL (Burda et al. 2015; nats and bits/dim),
the ELBO, rate (mean KL) and distortion (mean -log p(x|z)), active units, the
mutual information I(x; z) (He et al. 2019's estimator), and posterior-collapse
flags with a plain-words diagnosis. See vae/evals/ for the definitions.

Output: ``<run>/eval.json`` for the run's own test set, or
``<run>/eval_<stem>.json`` with ``--data <dir>/<stem>.<ext>`` (so evaluating
external images never overwrites the default evaluation); written atomically,
replacing an earlier file of the same name. The checkpoint is the best by test
ELBO unless ``--checkpoint`` says otherwise. Images are preprocessed
(binarised or not) exactly as the run's test set was in training.

--data accepts MNIST-format IDX files (names ending in ``ubyte`` or ``.idx``,
gzipped or not), ``.npy`` and ``.npz`` arrays of shape [N, 28, 28],
[N, 28, 28, 1] or [N, 784], uint8 in 0..255 or float in [0, 1]; anything else
is refused with a one-line message saying what is accepted (exit status 2).

A sweep directory is a directory that is not a run (no config.json) but whose
immediate subdirectories are runs: each member is evaluated and written in
turn; members that cannot be evaluated (e.g. no checkpoint yet) are reported
and the exit status is then 2.

Cost: k = 5000 on 1,000 images of the 784-400-20 MLP takes about a minute on
2 CPU cores (10,000 images: about 10 minutes); memory stays below ~1 GiB
whatever k and N (the bound runs in chunks).
"""

import json

from absl import flags

from vae.train import bench
from vae import cli, numerics
from vae.data import datasets as data
from vae.evals import evaluate, evaluator
from vae.model import bounds, diagnostics
from vae.store import runs

_WORKDIR = flags.DEFINE_string("workdir", None, "A run directory or a sweep "
                               "directory (whose subdirectories are runs).")
_K = flags.DEFINE_integer("k", evaluator.DEFAULT_K, "Importance samples per "
                          "example.")
_DATA = flags.DEFINE_string("data", None, "External images (IDX .gz/raw, .npy, "
                            ".npz) instead of the run's test set.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best",
                                  "'best', 'latest' or an epoch number.")
_SEED = flags.DEFINE_integer("seed", 0, "Evaluation seed (the draws).")
_BATCH = flags.DEFINE_integer("batch_size", evaluator.DEFAULT_BATCH_SIZE,
                              "Examples per compiled call.")
_CHUNK = flags.DEFINE_integer("chunk_size", evaluator.DEFAULT_CHUNK_SIZE,
                              "Importance samples per scan step.")
_MIN_AU = flags.DEFINE_integer("min_active_units", diagnostics.MIN_ACTIVE_UNITS,
                               "Flag collapse with fewer active units.")
_KL_FLOOR = flags.DEFINE_float("kl_floor", diagnostics.KL_FLOOR, "Flag collapse "
                               "when every latent dimension's KL is below this "
                               "(nats).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (on a "
                              "terminal; none when stderr is a file or pipe).")
_BENCH = flags.DEFINE_bool("bench", False, "Time k samples over "
                           "--bench_examples images against the matmul floor "
                           "and print JSON (no eval.json is written).")
_BENCH_EXAMPLES = flags.DEFINE_integer("bench_examples", 1000,
                                       "Examples timed by --bench.")
_BENCH_REPEATS = flags.DEFINE_integer("bench_repeats", 1, "Passes timed by "
                                      "--bench (the fastest is reported).")

flags.register_validator("k", lambda v: 1 <= v <= bounds.MAX_K,
                         message=f"--k must be an integer in [1, "
                         f"{bounds.MAX_K}] (importance samples per example)")
for _flag in ("batch_size", "chunk_size", "bench_examples", "bench_repeats"):
  flags.register_validator(_flag, lambda v: v >= 1,
                           message=f"--{_flag} must be an integer >= 1")
flags.register_validator("min_active_units", lambda v: v >= 0,
                         message="--min_active_units must be an integer >= 0")
flags.register_validator("kl_floor", lambda v: v >= 0,
                         message="--kl_floor must be a number >= 0 (nats)")
flags.register_multi_flags_validator(
    ["workdir", "bench"], lambda f: bool(f["workdir"] or f["bench"]),
    message="--workdir is required (a run or a sweep directory) unless --bench")


def _bench():
  numerics.configure("default")
  result = bench.iwae_benchmark(
      _WORKDIR.value, k=_K.value, num_examples=_BENCH_EXAMPLES.value,
      batch_size=_BATCH.value, chunk_size=_CHUNK.value, seed=_SEED.value,
      repeats=_BENCH_REPEATS.value, log=lambda s: print(s, flush=True))
  products = result.pop("floor_products")
  print(json.dumps(result, indent=2))
  for p in products:
    print(f"  {p['part']}: {p['lhs']} x {p['rhs']}, {p['count']} times, "
          f"{p['each_s'] * 1e3:.3f} ms each, {p['total_s']:.2f} s")
  print(f"k={result['k']} over {result['num_examples']} images: "
        f"{result['seconds']:.1f} s; matmul floor {result['floor_s']:.1f} s; "
        f"ratio {result['ratio']:.2f}")


def main(argv):
  del argv
  with cli.user_errors():
    if _BENCH.value:
      _bench()
      return
    checkpoint = runs.parse_checkpoint(_CHECKPOINT.value)
    is_sweep, members = runs.find_runs(_WORKDIR.value)
    # Before JAX starts; a member of another mode is then refused alone.
    numerics.configure(runs.load_config(members[0]).numerics)
    if _DATA.value:
      data.load_images_file(_DATA.value)  # a bad file fails here, once
    settings = evaluator.BoundSettings(
        k=_K.value, batch_size=_BATCH.value, chunk_size=_CHUNK.value,
        min_active_units=_MIN_AU.value, kl_floor=_KL_FLOOR.value)
    results = []
    for workdir in members:
      name = workdir.name
      try:
        result = evaluate.evaluate_run(
            workdir, settings, data_path=_DATA.value or None,
            checkpoint=checkpoint, seed=_SEED.value,
            progress=cli.progress_on_terminal(_PROGRESS.value)).metrics
      except cli.USER_ERRORS as e:
        if not is_sweep:
          raise
        results.append((name, str(e)))
        continue
      results.append((name, result))
      if is_sweep and _PROGRESS.value:
        print(f"{name}: {result['nll_nats']:.2f} nats, {result['total_s']:.0f}"
              f" s -> {workdir / result['file']}", flush=True)
    print(evaluate.evaluation_table(results))
    written = [r for _, r in results if not isinstance(r, str)]
    if written:
      r = written[0]
      where = (members[0].parent / "*" if is_sweep else members[0]) / r["file"]
      seconds = sum(w["total_s"] for w in written)
      print(f"written: {where}; {seconds:.1f} s for {len(written)} x "
            f"{r['num_examples']} examples x k={r['k']}, peak memory "
            f"{max(w['peak_rss_mib'] for w in written):.0f} MiB")
    failed = [n for n, r in results if isinstance(r, str)]
    if failed:
      raise runs.RunError(f"{len(failed)} of {len(results)} members could not "
                          f"be evaluated: {', '.join(failed)} (see above)")


if __name__ == "__main__":
  cli.run(main)
