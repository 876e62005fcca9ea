"""One evaluation path: training's per-epoch test metrics, evaluate_run
(what scripts/evaluate.py writes) and the figures all give the evaluator's
numbers, on one run."""

import json

import jax
import numpy as np
import pytest

from vae import config as config_lib
from vae import rng
from vae.data import preprocess
from vae.evals import evaluate, evaluator
from vae.store import restore, runs
from vae.train import loop as train
from vae.viz import plots


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("evaluator") / "run"
  # Two encoder batches of the test set, so batching is part of the path.
  config = config_lib.with_fields(hidden_sizes=(32,), latent_dim=3,
                                  batch_size=200, num_epochs=2,
                                  eval_batch_size=500)
  train.fit(config, workdir, progress=False, log=lambda s: None)
  return workdir


def test_training_evaluation_and_figures_give_the_evaluators_numbers(
    run, tmp_path):
  loaded = restore.load_run(run, "latest")
  config = loaded.config
  test = preprocess.load_test_set(config)
  ev = evaluator.Evaluator(loaded.model, test.images,
                           batch_size=config.eval_batch_size,
                           objective=config.objective)

  # Training: the test_* fields of the epoch's record are the evaluator's
  # one-sample ELBO of that checkpoint with the run's evaluation key, bit
  # for bit (the very program training compiles, a member axis of one).
  record = runs.read_metrics(run)[-1]
  assert record["epoch"] == loaded.epoch == 2
  elbo = ev.elbo(loaded.params, rng.member_keys(config.seed).eval,
                 beta=config.beta)
  assert {k: record[f"test_{k}"] for k in elbo.metrics} == elbo.metrics
  n = test.images.shape[0]
  assert elbo.per_example["log_likelihood"].shape == (n,)
  assert elbo.per_example["kl_per_dim"].shape == (n, 3)
  np.testing.assert_allclose(elbo.per_example["elbo"].mean(),
                             record["test_elbo"], rtol=1e-12)

  # scripts/evaluate.py (evaluate_run): eval.json is the evaluator's bound
  # of the checkpoint, and its per-example arrays come back with it.
  settings = evaluator.BoundSettings(k=8, batch_size=50)
  written = evaluate.evaluate_run(run, settings, checkpoint=2)
  saved = json.loads((run / "eval.json").read_text())
  bound = ev.bound(loaded.params, jax.random.key(0), settings)
  timings = ("iwae_s", "diagnostics_s")
  assert ({k: v for k, v in bound.metrics.items() if k not in timings}
          == {k: saved[k] for k in bound.metrics if k not in timings})
  assert sorted(written.per_example) == sorted(bound.per_example)
  for name, values in bound.per_example.items():
    assert values.shape[0] == n
    np.testing.assert_array_equal(written.per_example[name], values)
  assert saved["nll_nats"] == float(-bound.per_example["bound"].astype(
      np.float64).mean())

  # The figures: the KL bars draw the evaluator's posterior diagnostics.
  drawn = plots.kl_per_dim_bars(loaded.params, loaded.model, test.images,
                                tmp_path / "kl.png",
                                batch_size=config.eval_batch_size)
  diagnosed = ev.diagnostics(loaded.params)
  np.testing.assert_array_equal(drawn.arrays["kl"],
                                diagnosed.metrics["kl_per_dim"])
  np.testing.assert_array_equal(drawn.arrays["posterior_mean_variance"],
                                diagnosed.metrics["posterior_mean_variance"])

  # Across estimators. The figures encode in the ELBO's batches of
  # eval_batch_size: their KL of every example and dimension is training's,
  # bit for bit. The bound encodes in its own batches of 50, whose products
  # round differently in the last float32 bits: its rate is the ELBO's to
  # float32 rounding.
  np.testing.assert_array_equal(
      diagnosed.per_example["kl"],
      elbo.per_example["kl_per_dim"].astype(np.float64))
  np.testing.assert_allclose(saved["rate"], record["test_kl"], rtol=1e-5)
  np.testing.assert_allclose(saved["kl_per_dim"],
                             diagnosed.metrics["kl_per_dim"], rtol=1e-5)
