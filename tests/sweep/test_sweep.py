"""Sweeps: grid expansion, grouping, traced settings, member == standalone run,
the sharded member axis, KL schedules, free bits and the autoencoder baseline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vae import config as config_lib
from vae.model import core, networks as models
from vae.sweep import grouping, report, runner as sweep
from vae.train import objectives, loop as train
from vae.store import restore, runs
from vae.data import preprocess
from vae.train import state as state_lib
from vae.train import program as trainer_lib
from vae.train import devices as devices_lib

REPO = Path(__file__).resolve().parents[2]


def tiny(**overrides):
  return config_lib.with_fields(**{"hidden_sizes": (32,), "latent_dim": 2,
                                   "batch_size": 200, "num_epochs": 3,
                                   "checkpoint_every_epochs": 3, **overrides})


def _sweep_config(axes, **overrides):
  config = tiny(**overrides)
  config.sweep = ml_collections.ConfigDict(axes)
  return config


def test_members_are_the_product_of_the_axes_in_order():
  named = grouping.members(_sweep_config({"beta": (0.5, 2.0), "seed": (0, 1, 2)}))
  assert [n for n, _ in named] == [
      "beta0.5_seed0", "beta0.5_seed1", "beta0.5_seed2",
      "beta2_seed0", "beta2_seed1", "beta2_seed2"]
  assert [(c.beta, c.seed) for _, c in named] == [
      (0.5, 0), (0.5, 1), (0.5, 2), (2.0, 0), (2.0, 1), (2.0, 2)]
  assert all("sweep" not in c for _, c in named)


def test_explicit_member_list_and_bad_axes():
  config = tiny()
  config.sweep = ml_collections.ConfigDict(
      {"members": ({"beta": 1.0, "objective": "autoencoder"}, {"beta": 4.0})})
  assert [n for n, _ in grouping.members(config)] == ["beta1_objectiveautoencoder", "beta4"]
  with pytest.raises(config_lib.ConfigError, match="config.sweep.betta"):
    grouping.members(_sweep_config({"betta": (1.0,)}))
  with pytest.raises(config_lib.ConfigError, match="config.beta=-1"):
    grouping.members(_sweep_config({"beta": (1.0, -1.0)}))
  with pytest.raises(config_lib.ConfigError, match="non-empty tuple"):
    grouping.members(_sweep_config({"beta": ()}))


def test_traced_axes_share_one_group_shape_axes_split():
  traced = grouping.groups(grouping.members(_sweep_config(
      {"beta": (0.5, 2.0), "seed": (0, 1), "free_bits": (0.0, 0.5),
       "kl_schedule": ("constant", "cyclical")})))
  assert len(traced) == 1 and len(traced[0]) == 16
  shaped = grouping.groups(grouping.members(_sweep_config(
      {"latent_dim": (2, 4), "beta": (0.5, 2.0)})))
  # Axes combine in alphabetical order (a ConfigDict keeps its keys sorted).
  assert [[n for n, _ in g] for g in shaped] == [
      ["beta0.5_latent_dim2", "beta2_latent_dim2"],
      ["beta0.5_latent_dim4", "beta2_latent_dim4"]]


def test_kl_weight_schedules_closed_form():
  def weight(schedule, progress, **kw):
    config = tiny(kl_schedule=schedule, beta=2.0, **kw)
    return float(objectives.kl_weight(objectives.traced_settings(config), progress))
  assert weight("constant", 0.0) == 2.0
  assert [weight("linear", p, kl_warmup_epochs=4.0) for p in (0.0, 1.0, 2.0, 4.0, 9.0)] == [
      0.0, 0.5, 1.0, 2.0, 2.0]
  # Fu et al.: cycles of 4 epochs, ramp over the first half, then flat.
  cyc = [weight("cyclical", p, kl_cycle_epochs=4.0, kl_cycle_ratio=0.5)
         for p in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)]
  assert cyc == [0.0, 1.0, 2.0, 2.0, 0.0, 1.0]


def test_free_bits_floor_applies_to_batch_mean_per_dimension():
  log_lik = jnp.array([-10.0, -20.0])
  kl_per_dim = jnp.array([[0.1, 2.0, 0.0], [0.3, 1.0, 0.0]])  # batch means 0.2, 1.5, 0
  m = core.metrics_from_terms(log_lik, kl_per_dim, 1.0, 4, free_bits=0.5)
  assert float(m["loss"]) == pytest.approx(15.0 + (0.5 + 1.5 + 0.5))
  assert float(m["kl"]) == pytest.approx(1.7)  # the reported KL is the true one
  off = core.metrics_from_terms(log_lik, kl_per_dim, 1.0, 4, free_bits=0.0)
  assert float(off["loss"]) == pytest.approx(15.0 + 1.7)


def test_autoencoder_baseline_is_deterministic_and_has_no_kl():
  config = tiny(objective="autoencoder")
  model = models.build_model(config)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
  loss, m = core.autoencoder_loss(params, x, model=model)
  logits = core.decode(params, core.encode(params, x, model=model).mean, model=model)
  expected = -jnp.mean(jnp.sum(jax.nn.log_sigmoid(logits) - (1 - x) * logits, axis=(1, 2, 3)))
  assert float(loss) == pytest.approx(float(expected), rel=1e-6)
  assert float(m["kl"]) == 0.0 and float(m["elbo"]) == -float(m["recon"])
  objective = objectives.Objective.from_config(config)
  a = objectives.loss_fn(params, {}, x, jax.random.key(3), objectives.traced_settings(config), 0.0,
                    model=model, objective=objective)[0]
  b = objectives.loss_fn(params, {}, x, jax.random.key(4), objectives.traced_settings(config), 0.0,
                    model=model, objective=objective)[0]
  assert float(a) == float(b)  # no key enters the autoencoder


def _params(workdir):
  return jax.tree_util.tree_leaves(jax.device_get(restore.load_run(workdir, "latest").params))


def relative_difference(a, b):
  """Largest |a - b| / max|b| over the leaves of two parameter lists."""
  return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30))
             for x, y in zip(a, b, strict=True))


def _without_timings(records):
  return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]


def test_sweep_member_equals_standalone_run_bitwise(tmp_path):
  config = _sweep_config({"beta": (0.5, 2.0), "seed": (0, 1)}, free_bits=0.1,
                         kl_schedule="cyclical", kl_cycle_epochs=2.0)
  rows = sweep.run_sweep(config, tmp_path / "sweep", progress=False, log=lambda s: None)
  assert [r["member"] for r in rows] == ["beta0.5_seed0", "beta0.5_seed1", "beta2_seed0",
                                         "beta2_seed1"]
  solo = tiny(beta=2.0, seed=1, free_bits=0.1, kl_schedule="cyclical",
              kl_cycle_epochs=2.0)
  train.fit(solo, tmp_path / "solo", progress=False, log=lambda s: None)
  # Bitwise, by construction (vae.model.dense.rows_product, sequential
  # evaluation, FMA-free element-wise code): every parameter, and every
  # metric of every epoch.
  for x, y in zip(_params(tmp_path / "sweep" / "beta2_seed1"),
                  _params(tmp_path / "solo"), strict=True):
    np.testing.assert_array_equal(x, y)
  assert _without_timings(runs.read_metrics(tmp_path / "sweep" / "beta2_seed1")) == \
      _without_timings(runs.read_metrics(tmp_path / "solo"))
  # The member's run directory is a complete run: its config is the member's.
  assert runs.load_config(tmp_path / "sweep" / "beta2_seed1").beta == 2.0
  # Larger beta: lower rate (KL) for the same seed.
  by = {r["member"]: r for r in rows}
  assert by["beta2_seed1"]["rate"] < by["beta0.5_seed1"]["rate"]


# In the slow suite (CI runs it): groups of 1, 2 and 3 are three
# compilations per architecture (minutes for conv and batch norm, whose
# members run one after another through the standalone program);
# test_sweep_member_equals_standalone_run_bitwise keeps a
# member-versus-standalone check in the default one.
@pytest.mark.slow
@pytest.mark.parametrize("arch", [
    pytest.param({"hidden_sizes": (48, 24), "latent_dim": 5,
                  "activation": "tanh", "binarize": "dynamic",
                  "batch_size": 40}, id="mlp"),
    pytest.param({"architecture": "conv", "conv_features": (4, 8),
                  "latent_dim": 3}, id="conv"),
    pytest.param({"hidden_sizes": (32,), "batch_norm": True, "latent_dim": 2},
                 id="batch_norm"),
])
def test_member_count_never_changes_a_members_bits(arch):
  """A member (seed 1) trained in groups of 1, 2 and 3 members: the same
  parameters and per-example terms, bit for bit, for MLPs (batched), conv
  and batch-norm models (members one after another)."""
  base = tiny(num_epochs=2, **arch)
  ds = preprocess.load_dataset(base)
  n = 6 * base.batch_size
  train_images = jnp.asarray(ds.train_images[:n])
  test_images = jnp.asarray(ds.test_images[:300])
  results = []
  for seeds in ([1], [0, 1], [2, 0, 1]):
    group = trainer_lib.start_group(
        [config_lib.with_fields(base, seed=s) for s in seeds], n)
    state = group.state
    for epoch in (1, 2):
      state, terms = group.trainer.train_epoch(state, train_images, epoch,
                                               group.keys.train, group.settings)
    log_lik, kl = group.trainer.evaluation_terms(state.variables(), test_images,
                                                 group.keys.eval)
    i = seeds.index(1)
    results.append(jax.device_get((state_lib.unstack(state.params, i),
                                   terms["log_likelihood"][i], log_lik[i], kl[i])))
  for other in results[1:]:
    for x, y in zip(jax.tree_util.tree_leaves(results[0]),
                    jax.tree_util.tree_leaves(other), strict=True):
      np.testing.assert_array_equal(x, y)


# Slow suite (CI runs it): the default suite's resume checks are a single run's.
@pytest.mark.slow
def test_interrupted_sweep_resumes_to_the_same_result(tmp_path):
  axes = {"beta": (0.5, 2.0)}
  sweep.run_sweep(_sweep_config(axes, num_epochs=1, checkpoint_every_epochs=1),
                  tmp_path / "a", progress=False, log=lambda s: None)
  messages = []
  sweep.run_sweep(_sweep_config(axes, num_epochs=3, checkpoint_every_epochs=1),
                  tmp_path / "a", progress=False, log=messages.append)
  assert any("resuming from the checkpoint of epoch 1" in m for m in messages)
  sweep.run_sweep(_sweep_config(axes, num_epochs=3, checkpoint_every_epochs=1),
                  tmp_path / "b", progress=False, log=lambda s: None)
  for name in ("beta0.5", "beta2"):
    for x, y in zip(_params(tmp_path / "a" / name), _params(tmp_path / "b" / name)):
      np.testing.assert_array_equal(x, y)


def test_report_table_csv_and_rate_distortion_plot(tmp_path):
  config = _sweep_config({"beta": (0.5, 4.0), "seed": (0, 1)}, num_epochs=1)
  rows = sweep.run_sweep(config, tmp_path, progress=False, log=lambda s: None)
  written = sweep.write_report(rows, tmp_path)
  assert {p.name for p in written} == {"sweep.csv", "sweep.json", "rate_distortion.png"}
  lines = (tmp_path / "sweep.csv").read_text().splitlines()
  assert len(lines) == 5 and "test_elbo" in lines[0]
  assert (tmp_path / "rate_distortion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  text = report.sweep_table(rows)
  assert "beta0.5_seed0" in text and "test_elbo" in text


SHARDED_SCRIPT = """
import json, sys, jax, numpy as np, ml_collections
from vae import numerics
from vae.sweep import runner as sweep
from vae.store import restore
numerics.configure("default")
from vae import config as config_lib
assert len(jax.devices()) == 4, jax.devices()
config = config_lib.default_config()
config.hidden_sizes, config.latent_dim, config.batch_size = (32,), 2, 200
config.num_epochs, config.checkpoint_every_epochs = 2, 2
config.sweep = ml_collections.ConfigDict({"beta": (0.5, 1.0, 2.0, 4.0)})
out = sys.argv[1]
sweep.run_sweep(config, out + "/sharded", progress=False, log=lambda s: None)
sweep.run_sweep(config, out + "/single", devices=jax.devices()[:1], progress=False,
                log=lambda s: None)
worst = 0.0
for name in ("beta0.5", "beta1", "beta2", "beta4"):
  a = jax.tree_util.tree_leaves(restore.load_run(out + "/sharded/" + name, "latest").params)
  b = jax.tree_util.tree_leaves(restore.load_run(out + "/single/" + name, "latest").params)
  for x, y in zip(a, b):
    x, y = np.asarray(x), np.asarray(y)
    worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
print(json.dumps({"worst_relative": worst}))
"""


# Slow suite: four devices in a subprocess; test_shards keeps an in-process shard check.
@pytest.mark.slow
def test_member_axis_sharded_over_four_cpu_devices_matches_unsharded(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["worst_relative"] == 0.0  # bitwise


def test_member_devices_one_per_member_at_most_and_bad_cpu_device_counts():
  devices = ["d0", "d1"]
  assert devices_lib.member_devices(1, devices) is None  # a lone run is not padded
  assert devices_lib.member_devices(3, devices) == devices  # padded to 4
  assert devices_lib.member_devices(16, devices) == devices
  assert devices_lib.member_devices(16, None) is None
  assert devices_lib.member_devices(2, devices[:1]) is None
  with pytest.raises(config_lib.ConfigError, match="cpu_devices=-1"):
    devices_lib.use_cpu_cores_as_devices(-1)


# Slow suite: a sweep plus its evaluation; test_evaluate covers the bound.
@pytest.mark.slow
def test_sweep_table_carries_evaluation_when_asked(tmp_path):
  config = _sweep_config({"beta": (0.5, 200.0)}, num_epochs=2, eval_k=8)
  rows = sweep.run_sweep(config, tmp_path, progress=False, log=lambda s: None)
  for r in rows:
    saved = json.loads((tmp_path / r["member"] / "eval.json").read_text())
    assert r["nll"] == saved["nll_nats"] and saved["k"] == 8
    assert r["active_units"] == saved["active_units"]
  # A KL weight of 200 shuts the posterior: the table says so.
  by = {r["member"]: r for r in rows}
  assert by["beta200"]["collapse"] and not by["beta0.5"]["collapse"]
  assert "nll" in report.sweep_table(rows) and "collapse" in report.sweep_table(rows)


@pytest.mark.slow
def test_bench_sweep_shards_members_over_the_cpu_cores():
  out = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "bench.py"), "--sweep", "4",
       "--hidden", "8", "--latent_dim", "2", "--batch_size", "100",
       "--num_examples", "1000", "--epochs", "5", "--cpu_devices", "2"],
      env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout[out.stdout.index("{"):])
  assert (result["members"], result["sweep_devices"], len(result["devices"])) == (4, 2, 2)
  assert result["sweep_over_single"] == result["sweep_epoch_s"] / result["single_epoch_s"]


README_COMPARE = ["--config", str(REPO / "experiments" / "beta_sweep.py") + ":small"]


def _script(name, *args, env=None):
  quiet = ["--noprogress"] if name in ("sweep.py", "train.py") else []
  out = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args,
                        *quiet], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                       timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                    reason="two CPU devices need two cores (one device per core)")
@pytest.mark.slow
def test_readme_member_vs_standalone_on_two_devices(tmp_path):
  """The README's compare command, shortened to 2 members on 2 CPU devices
  and 5 epochs (enough for a last-bit difference to grow past 1e-4 nats).
  Slow (three processes); the default suite checks the same in process
  (test_sweep_member_equals_standalone_run_bitwise) and over devices
  (test_member_axis_sharded_over_four_cpu_devices_matches_unsharded)."""
  _script("sweep.py", *README_COMPARE, "--config.num_epochs=5",
          "--config.sweep.beta=(4.0,)", "--config.sweep.seed=(0,1)",
          "--cpu_devices=2", "--workdir", str(tmp_path / "sweep"))
  _script("train.py", *README_COMPARE, "--config.num_epochs=5",
          "--config.beta=4.0", "--config.seed=1", "--workdir",
          str(tmp_path / "alone"))
  result = json.loads(_script("compare.py", str(tmp_path / "sweep" / "beta4_seed1"),
                              str(tmp_path / "alone")))
  assert result["bitwise_params"] and result["test_elbo_difference"] == 0.0


@pytest.mark.slow
def test_readme_member_vs_standalone_full_size(tmp_path):
  """The README's command as written: the 8-member small sweep (20 epochs,
  split over the cores) against beta4_seed1 trained alone."""
  _script("sweep.py", *README_COMPARE, "--workdir", str(tmp_path / "sweep"))
  _script("train.py", *README_COMPARE, "--config.beta=4.0", "--config.seed=1",
          "--workdir", str(tmp_path / "alone"))
  result = json.loads(_script("compare.py", str(tmp_path / "sweep" / "beta4_seed1"),
                              str(tmp_path / "alone")))
  assert result["bitwise_params"] and result["test_elbo_difference"] == 0.0
  assert result["max_relative_param_difference"] == 0.0


AVX2_SCRIPT = """
import sys, json, jax, jax.numpy as jnp, numpy as np
from vae import config as config_lib, numerics
from vae.train import state, program as trainer
from vae.data import preprocess
numerics.configure("default")
base = config_lib.with_fields(hidden_sizes=(64,), latent_dim=4, batch_size=64)
ds = preprocess.load_dataset(base)
images = jnp.asarray(ds.train_images[:512])
out = []
for seeds in ([1], [0, 1]):
  g = trainer.start_group([config_lib.with_fields(base, seed=s) for s in seeds], 512)
  st, _ = g.trainer.train_epoch(g.state, images, 1, g.keys.train, g.settings)
  st, _ = g.trainer.train_epoch(st, images, 2, g.keys.train, g.settings)
  out.append(jax.device_get(state.unstack(st.params, seeds.index(1))))
print(json.dumps(all(np.array_equal(a, b) for a, b in zip(
    jax.tree_util.tree_leaves(out[0]), jax.tree_util.tree_leaves(out[1])))))
"""


@pytest.mark.slow
def test_member_equals_standalone_on_an_emulated_avx2_cpu():
  """On an AVX2 + FMA CPU without AVX-512 (an AMD EPYC Rome emulated by
  qemu-user: CPUID, so XLA's code generation and the matrix-product
  libraries take their AVX2 paths), where members used to differ from their
  standalone runs in the last bits."""
  import platform
  import shutil
  qemu = shutil.which("qemu-x86_64")
  if qemu is None or platform.machine() != "x86_64":
    pytest.skip("needs qemu-x86_64 (Debian: apt-get install qemu-user) on x86-64")
  out = subprocess.run([qemu, "-cpu", "EPYC-Rome", sys.executable, "-c", AVX2_SCRIPT],
                       capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) is True



def test_more_cpu_devices_than_cores_is_refused():
  from vae.train import devices as devices_lib
  from vae.errors import ConfigError
  cores = len(os.sched_getaffinity(0))
  with pytest.raises(ConfigError, match=f"at most the {cores} core"):
    devices_lib.use_cpu_cores_as_devices(cores + 1)
