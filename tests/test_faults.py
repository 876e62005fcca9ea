"""Fault injection: nothing is lost and every failure says what happened.

Each case is marked ``fault``; the run prints how many there were. Subprocess
cases run scripts/train.py as a user would and kill or signal it for real.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from vae.store import checkpoint, provenance, restore, runs
from vae.sweep import report, runner as sweep
from vae.train import loop as train
from vae.data import datasets as data
from vae.train import program as trainer_lib
from vae import config as config_lib

pytestmark = pytest.mark.fault

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
TRAIN = [sys.executable, str(REPO / "scripts" / "train.py"), "--config",
         str(REPO / "experiments" / "quickstart.py"), "--config.hidden_sizes=(32,)",
         "--config.latent_dim=2", "--config.batch_size=200", "--noprogress"]


def tiny(**overrides):
  return config_lib.with_fields(**{"hidden_sizes": (32,), "latent_dim": 2,
                                   "batch_size": 200, "num_epochs": 3, **overrides})


def _quiet(_):
  pass


def _leaves(workdir, which="latest"):
  return jax.tree_util.tree_leaves(jax.device_get(restore.load_run(workdir, which).params))


def _assert_same_run(a, b):
  strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rs]
  assert strip(runs.read_metrics(a)) == strip(runs.read_metrics(b))
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: 10 epochs of the tiny quickstart run, never interrupted."""
  workdir = tmp_path_factory.mktemp("ref") / "run"
  subprocess.run(TRAIN + ["--config.num_epochs=10", "--workdir", str(workdir)],
                 env=ENV, check=True, capture_output=True)
  return workdir


def _start(workdir, epochs=10):
  return subprocess.Popen(TRAIN + [f"--config.num_epochs={epochs}", "--workdir",
                                   str(workdir)], env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(workdir, count, proc, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if len(runs.read_metrics(workdir)) >= count:
      return
    time.sleep(0.02)


# SIGINT takes the same path as SIGTERM (one handler): in the slow suite.
@pytest.mark.parametrize("sig", [
    signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_stops_at_epoch_boundary_with_checkpoint_and_resumes_bitwise(
    tmp_path, uninterrupted, sig):
  rng = random.Random(sig)  # fixed seed for the moment of the signal
  workdir = tmp_path / "run"
  proc = _start(workdir)
  _wait_for_epochs(workdir, rng.randint(1, 4), proc)
  time.sleep(rng.uniform(0.0, 0.2))
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 75, stderr[-2000:]
  assert "stopped by " + sig.name in stderr and "Run the same command again" in stderr
  stopped_at = len(runs.read_metrics(workdir))
  assert checkpoint.Checkpoints(workdir / "checkpoints").latest_epoch() == stopped_at
  out = subprocess.run(TRAIN + ["--config.num_epochs=10", "--workdir", str(workdir)],
                       env=ENV, capture_output=True, text=True, check=True)
  assert f"resuming from the checkpoint of epoch {stopped_at}" in out.stdout
  _assert_same_run(workdir, uninterrupted)


# A second random moment: in the slow suite (scripts/soak.py tries 50).
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_sigkill_at_a_random_moment_then_resume_is_bitwise(tmp_path, uninterrupted, seed):
  rng = random.Random(seed)
  workdir = tmp_path / "run"
  proc = _start(workdir)
  _wait_for_epochs(workdir, rng.randint(1, 6), proc)
  time.sleep(rng.uniform(0.0, 0.3))  # anywhere: mid-epoch, mid-checkpoint-write
  proc.kill()
  proc.wait()
  subprocess.run(TRAIN + ["--config.num_epochs=10", "--workdir", str(workdir)],
                 env=ENV, capture_output=True, check=True)
  _assert_same_run(workdir, uninterrupted)


@pytest.fixture(scope="module")
def five_epochs(tmp_path_factory):
  """The reference of the corruption tests: 5 tiny epochs, undisturbed."""
  workdir = tmp_path_factory.mktemp("five") / "run"
  train.fit(tiny(num_epochs=5), workdir, progress=False, log=_quiet)
  return workdir


# truncate and flip in the slow suite; test_checkpoint damages each file.
@pytest.mark.parametrize("damage", [
    pytest.param("truncate", marks=pytest.mark.slow),
    pytest.param("flip", marks=pytest.mark.slow), "delete"])
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, damage,
                                                          five_epochs):
  train.fit(tiny(num_epochs=3), tmp_path / "a", progress=False, log=_quiet)
  latest = tmp_path / "a" / "checkpoints" / "3"
  files = sorted((p for p in latest.rglob("*") if p.is_file() and p.stat().st_size > 64
                  and "metadata" not in p.name.lower()), key=lambda p: -p.stat().st_size)
  victim = files[0]
  raw = bytearray(victim.read_bytes())
  if damage == "truncate":
    victim.write_bytes(bytes(raw[: len(raw) // 2]))
  elif damage == "flip":
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
  else:
    victim.unlink()
  messages = []
  summary = train.fit(tiny(num_epochs=5), tmp_path / "a", progress=False,
                      log=messages.append)
  assert summary["resumed_from"] == 2
  assert any("checkpoints/3" in m for m in messages), messages
  _assert_same_run(tmp_path / "a", five_epochs)


def test_non_finite_loss_stops_the_run_naming_epoch_and_last_good_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run(TRAIN + ["--config.learning_rate=1000.0", "--config.num_epochs=3",
                                "--workdir", str(workdir)], env=ENV, capture_output=True,
                       text=True)
  assert out.returncode == 3
  assert "diverged in epoch 1" in out.stderr and "no good checkpoint" in out.stderr
  assert "Traceback" not in out.stderr
  info = json.loads((workdir / "diverged.json").read_text())
  assert info["epoch"] == 1 and info["last_good_checkpoint"] is None
  assert runs.read_metrics(workdir) == []  # nothing non-finite was recorded


def test_diverging_sweep_member_is_stopped_alone(tmp_path):
  # beta=inf is refused up front; a Gaussian of sigma 1e-30 overflows from
  # the first step. The diverging member is a group of its own (a lone
  # member raises Diverged inside the sweep, which must not stop the rest).
  config = tiny(num_epochs=2)
  config.sweep = ml_collections.ConfigDict({"members": (
      {"name": "beta1"},
      {"name": "overflow", "likelihood": "gaussian", "gaussian_sigma": 1e-30})})
  rows = sweep.run_sweep(config, tmp_path, progress=False, log=_quiet)
  status = {r["member"]: r["status"] for r in rows}
  assert status == {"beta1": "finished", "overflow": "diverged"}
  assert len(runs.read_metrics(tmp_path / "beta1")) == 2
  assert json.loads((tmp_path / "overflow" / "diverged.json").read_text())["epoch"] == 1
  assert "diverged" in report.sweep_table(rows)


def test_on_nan_skip_skips_and_counts_non_finite_updates(tmp_path, monkeypatch):
  # beta = inf makes every training loss and update non-finite while the
  # test ELBO (free of beta) stays finite. The config refuses it (issue 13);
  # this test of the skipping mechanism lets it through.
  monkeypatch.setattr(config_lib, "validate", lambda config, datasets=None: config)
  config = tiny(num_epochs=2, beta=float("inf"), on_nan="skip",
                max_skipped_steps=1000)
  trainer = trainer_lib.make_trainer(config, 4000)
  initial = jax.tree_util.tree_leaves(trainer.init(np.asarray([0], np.int32)).params)
  summary = train.fit(config, tmp_path, progress=False, log=_quiet)
  records = runs.read_metrics(tmp_path)
  assert [r["train_skipped_steps"] for r in records] == [20, 20]  # 4000 / 200 steps
  assert summary["status"] == "finished"
  for x, y in zip(_leaves(tmp_path), initial, strict=True):
    np.testing.assert_array_equal(x, np.asarray(y)[0])  # every update was skipped


# Slow suite: test_refused_second_process_writes_nothing_into_the_live_run
# keeps the refusal in the default one.
@pytest.mark.slow
def test_second_process_on_a_live_workdir_is_refused_and_stale_lock_taken_over(tmp_path):
  workdir = tmp_path / "run"
  first = _start(workdir, epochs=400)
  _wait_for_epochs(workdir, 1, first)
  second = subprocess.run(TRAIN + ["--config.num_epochs=400", "--workdir", str(workdir)],
                          env=ENV, capture_output=True, text=True)
  assert second.returncode == 2
  assert f"in use by another run (pid {first.pid})" in second.stderr
  first.kill()  # dies holding the lock: the kernel releases it
  first.wait()
  third = subprocess.run(TRAIN + ["--config.num_epochs=1", "--workdir", str(tmp_path / "x"),
                                  ], env=ENV, capture_output=True, text=True)
  assert third.returncode == 0
  lock = runs.WorkdirLock(workdir).acquire()  # stale lock: taken over
  lock.release()


def test_unwritable_workdir_fails_before_training(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(runs.RunError, match="is not writable"):
    train.fit(tiny(), blocker / "run", progress=False, log=_quiet)
  if os.geteuid() != 0:  # root ignores permission bits
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(runs.RunError, match="is not writable"):
      train.fit(tiny(), locked / "run", progress=False, log=_quiet)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
  original = checkpoint.Checkpoints.save

  def failing_save(self, epoch, state, *, metrics):
    if epoch == 2:
      raise OSError(28, "No space left on device")
    return original(self, epoch, state, metrics=metrics)

  monkeypatch.setattr(checkpoint.Checkpoints, "save", failing_save)
  with pytest.raises(runs.RunError) as excinfo:
    train.fit(tiny(checkpoint_every_epochs=1), tmp_path, progress=False, log=_quiet)
  message = str(excinfo.value)
  assert "epoch 2" in message and "No space left" in message
  assert "The checkpoint of epoch 1 is kept" in message
  monkeypatch.setattr(checkpoint.Checkpoints, "save", original)
  assert restore.load_run(tmp_path, "latest").epoch == 1


BAD_CLI = [
    (["--config.betta=1"], "betta"),
    (["--config.beta=abc"], "beta"),
    (["--config.latent_dim=-3"], "config.latent_dim=-3"),
    (["--config.learn_scale=True"], "config.learn_scale=True"),
    (["--config.dataset=imagenet"], "config.dataset='imagenet'"),
    (["--config.on_nan=ignore"], "config.on_nan='ignore'"),
    # Refused before anything trains (they used to cost an epoch, then
    # "diverged", or an OverflowError traceback).
    (["--config.beta=inf"], "config.beta=inf"),
    (["--config.learning_rate=inf"], "config.learning_rate=inf"),
    (["--config.free_bits=inf"], "config.free_bits=inf"),
    (["--config.seed=2147483648"], "config.seed=2147483648 is not accepted: an integer in [0, 2147483647]"),
    (["--config.seed=99999999999999999999"], "config.seed=99999999999999999999"),
]


@pytest.mark.parametrize("args,fragment", BAD_CLI, ids=[a[0] for a, _ in BAD_CLI])
def test_bad_command_line_values_give_one_clear_line(tmp_path, args, fragment):
  out = subprocess.run(TRAIN + args + ["--workdir", str(tmp_path / "run")], env=ENV,
                       capture_output=True, text=True)
  assert out.returncode == 2, out.stderr
  assert fragment in out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "run" / runs.METRICS_FILE).exists()  # nothing trained


def test_data_files_with_bad_values_are_refused(tmp_path):
  images = np.random.default_rng(0).uniform(size=(5, 28, 28)).astype(np.float32)
  for name, array in {"nan": np.where(images > 0.5, np.nan, images),
                      "inf": np.where(images > 0.5, np.inf, images),
                      "range": images * 3, "shape": images[:, :20, :20]}.items():
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    with pytest.raises(data.DataError, match=str(path).replace(".", r"\.")):
      data.load_images_file(path)
  with pytest.raises(data.DataError, match="does not exist|not found|No such"):
    data.load_images_file(tmp_path / "missing.npy")


def test_checkpoint_of_another_model_shape_is_refused_by_name(tmp_path):
  train.fit(tiny(num_epochs=1), tmp_path, progress=False, log=_quiet)
  saved = json.loads((tmp_path / "config.json").read_text())
  saved["hidden_sizes"] = [48]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(checkpoint.CheckpointError) as excinfo:
    restore.load_run(tmp_path, "latest")
  message = str(excinfo.value)
  assert "Dense_0/kernel" in message and "(784, 32)" in message and "(784, 48)" in message


def test_every_run_records_its_provenance(tmp_path):
  train.fit(tiny(num_epochs=1), tmp_path, progress=False, log=_quiet)
  record = json.loads((tmp_path / "provenance.json").read_text())
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
    assert record["versions"][name], name
  assert record["python"] and record["platform"] and record["devices"]
  assert "git_commit" in record and "git_dirty" in record
  assert json.loads((tmp_path / "config.json").read_text())["latent_dim"] == 2
  # What can change the bits on another host: the CPU and its instruction
  # sets, XLA_FLAGS (the numerics mode's, here "default"), JAX options, the
  # devices and the lock the environment came from.
  model, isa = provenance.cpu_description()
  assert record["cpu_model"] == model and record["cpu_isa"] == isa
  if "avx2" in open("/proc/cpuinfo").read():
    assert "avx2" in record["cpu_isa"]
  assert "--xla_cpu_max_isa=AVX" in record["xla_flags"]
  assert record["jax_config"]["jax_enable_x64"] == "False"
  assert record["device_count"] == len(jax.devices())
  assert record["device_kinds"] == ["cpu"]
  # XLA's CPU thread pool, which splits the products: NPROC when set, else
  # the usable cores.
  nproc = os.environ.get("NPROC")
  assert record["xla_cpu_threads"] == (int(nproc) if nproc else
                                       len(os.sched_getaffinity(0)))
  assert record["nproc_env"] == nproc
  lock = REPO / "requirements.lock"
  assert record["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()


def test_a_log_file_gets_one_line_per_n_epochs_not_redraws(tmp_path):
  out = subprocess.run(
      [a for a in TRAIN if a != "--noprogress"] +
      ["--config.num_epochs=5", "--log_every=2", "--workdir",
       str(tmp_path / "run")], env=ENV, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert "\r" not in out.stderr
  lines = [l for l in out.stderr.splitlines() if ": epoch " in l]
  assert [l.split(": epoch ")[1].split()[0] for l in lines] == [
      "2/5", "4/5", "5/5"], out.stderr
  assert all("s/epoch) test_elbo=" in l and " kl=" in l for l in lines)


def test_portable_numerics_turns_the_runtime_chosen_kernels_off():
  code = (
      "import sys; from vae import numerics; "
      "numerics.configure(sys.argv[1]); import jax, jax.numpy as jnp; "
      "f = jax.jit(lambda a, b: jnp.tanh(a @ b)); "
      "a = jnp.ones((20, 784)); b = jnp.ones((784, 200)); "
      "print('ynn_fusion' in f.lower(a, b).compile().as_text())")
  seen = {}
  for mode in ("default", "portable"):
    env = {k: v for k, v in ENV.items() if k != "XLA_FLAGS"}
    seen[mode] = subprocess.run([sys.executable, "-c", code, mode], env=env,
                                capture_output=True, text=True,
                                check=True).stdout.strip()
  # The default mode lets XLA hand products to YNNPACK (kernels chosen at
  # run time for the processor); portable mode never does.
  assert seen == {"default": "True", "portable": "False"}


_PRODUCTS = (
    "import sys, hashlib; from vae import numerics; "
    "numerics.configure(sys.argv[1]); import jax, numpy as np; "
    "k1, k2 = jax.random.split(jax.random.key(0)); "
    "a = jax.random.normal(k1, (784, 512)); b = jax.random.normal(k2, (512, 400)); "
    "r = jax.jit(lambda a, b: (a.T @ (a @ b), a @ b))(a, b); "
    "print(hashlib.sha256(b''.join(np.asarray(x).tobytes() for x in r)).hexdigest())")


def _product_digest(mode, cores=None, nproc=None):
  env = {k: v for k, v in ENV.items() if k not in ("XLA_FLAGS", "NPROC")}
  if nproc is not None:
    env["NPROC"] = str(nproc)
  return subprocess.run(
      [sys.executable, "-c", _PRODUCTS, mode], env=env, capture_output=True,
      text=True, check=True,
      preexec_fn=(None if cores is None else
                  lambda: os.sched_setaffinity(0, cores))).stdout.strip()


# Slow suite: three processes on different core sets.
@pytest.mark.slow
def test_portable_numerics_gives_the_same_bits_on_any_thread_pool_size():
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    pytest.skip("needs two usable cores")
  # The dependence it removes (measured on 2-core AMD EPYCs with AVX2 and
  # with AVX-512): the library products are split by XLA's CPU thread pool,
  # whose size NPROC sets (else the usable cores).
  assert (_product_digest("default", nproc=1)
          != _product_digest("default", nproc=2))
  # Portable mode's products are XLA's own code: one thread or three, one
  # core or two, the same bits.
  portable = _product_digest("portable", nproc=1)
  assert portable == _product_digest("portable", nproc=3)
  assert portable == _product_digest("portable", cores={cores[0]})
  assert portable == _product_digest("portable", cores=set(cores[:2]))


# -- issue 16: faults found as a new user ------------------------------------


def test_refused_second_process_writes_nothing_into_the_live_run(tmp_path):
  workdir = tmp_path / "run"
  first = _start(workdir, epochs=400)
  try:
    _wait_for_epochs(workdir, 1, first)
    before = {f: (workdir / f).read_bytes()
              for f in (runs.CONFIG_FILE, runs.PROVENANCE_FILE)}
    second = subprocess.run(TRAIN + ["--config.num_epochs=200", "--workdir",
                                     str(workdir)], env=ENV,
                            capture_output=True, text=True)
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr
    # The lock is taken before anything is written: the live run's config
    # still says 400 epochs, its provenance is its own.
    assert {f: (workdir / f).read_bytes() for f in before} == before
    assert json.loads(before[runs.CONFIG_FILE])["num_epochs"] == 400
  finally:
    first.kill()
    first.wait()


def test_fewer_epochs_than_a_finished_run_has_leave_its_config_alone(tmp_path):
  train.fit(tiny(num_epochs=3), tmp_path, progress=False, log=_quiet)
  config = (tmp_path / runs.CONFIG_FILE).read_bytes()
  said = []
  summary = train.fit(tiny(num_epochs=2), tmp_path, progress=False,
                      log=said.append)
  assert summary["already_finished"] and summary["epoch"] == 3
  assert (tmp_path / runs.CONFIG_FILE).read_bytes() == config
  assert any("has 3 epochs, more than num_epochs=2" in s and
             "left as it is" in s for s in said), said


def test_disk_full_during_a_checkpoint_is_one_line_and_loses_nothing(tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs",
                     str(disk)], capture_output=True).returncode != 0:
    pytest.skip("needs permission to mount a small tmpfs (a full disk)")
  try:
    # The quickstart model: one checkpoint (params and Adam moments) is
    # about 7.6 MB, so the first or second save fills the 6 MB disk.
    args = [sys.executable, str(REPO / "scripts" / "train.py"), "--config",
            str(REPO / "experiments" / "quickstart.py"), "--noprogress",
            "--config.num_epochs=4", "--workdir", str(disk / "run")]
    out = subprocess.run(args, env=ENV, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-3000:]
    assert "No space left on device" in lines[0], lines[0]
    # Nothing was lost: what had been recorded is intact and a re-run on a
    # disk with room resumes (metrics are cut back to the kept checkpoint).
    assert runs.read_metrics(disk / "run")
  finally:
    subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("script", ["train.py", "sweep.py"])
def test_a_missing_config_file_is_one_line(tmp_path, script):
  # A relative path, run from another directory than the repository.
  out = subprocess.run([sys.executable, str(REPO / "scripts" / script),
                        "--config", "experiments/nonexistent.py", "--workdir",
                        str(tmp_path / "run")], env=ENV, cwd=tmp_path,
                       capture_output=True, text=True)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: --config='experiments/nonexistent.py' does not exist; expected "
      "an experiment config file: a Python file whose get_config() returns a "
      "ml_collections.ConfigDict"]


def test_a_byte_flipped_gzip_file_is_one_data_error(tmp_path):
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  data.save_idx(path, np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 7)
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0xFF  # inside the deflate stream
  path.write_bytes(bytes(raw))
  with pytest.raises(data.DataError, match="invalid gzip data"):
    data.read_idx(path)
  out = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"),
                        "--workdir", str(tmp_path), "--data", str(path)],
                       env=ENV, capture_output=True, text=True)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr


# Slow suite: the first SIGTERM's path is in the default one.
@pytest.mark.slow
def test_a_second_sigterm_stops_at_once_with_75_and_no_traceback(tmp_path):
  workdir = tmp_path / "run"
  proc = _start(workdir, epochs=400)
  _wait_for_epochs(workdir, 1, proc)
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err
  assert "Traceback" not in err and "stopped at once by a second SIGTERM" in err
  # What was checkpointed resumes: the run is not damaged.
  out = subprocess.run(TRAIN + ["--config.num_epochs=2", "--workdir",
                                str(workdir)], env=ENV, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr


def test_a_sigterm_during_start_up_exits_75(tmp_path):
  proc = _start(tmp_path / "run", epochs=3)
  time.sleep(1.0)  # importing jax takes longer: this is start-up
  assert proc.poll() is None
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 75, err
  assert "Traceback" not in err


def test_help_lists_the_config_fields_with_defaults_and_exits_0():
  out = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"),
                        "--help"], env=ENV, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  defaults = config_lib.default_config()
  for field in defaults:
    assert f"--config.{field}  (default: {defaults[field]!r})" in out.stdout


def test_bench_rejects_a_bad_hidden_width_in_one_line():
  out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"),
                        "--hidden", "64,x"], env=ENV, capture_output=True,
                       text=True)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: --hidden='64,x' is not accepted: comma-separated positive "
      "integers, e.g. 200,200"]


def test_the_best_epoch_always_has_a_checkpoint(tmp_path):
  # Checkpoints every 10 epochs, a noisy learning rate: whichever epoch is
  # best by test ELBO is saved when it happens and kept (BestN(1)).
  train.fit(tiny(num_epochs=6, learning_rate=3e-2, checkpoint_every_epochs=10),
            tmp_path, progress=False, log=_quiet)
  records = runs.read_metrics(tmp_path)
  best = max(records, key=lambda r: r["test_elbo"])["epoch"]
  assert checkpoint.best_epoch_on_disk(tmp_path / runs.CHECKPOINT_DIR) == best
  assert restore.load_run(tmp_path, "best").epoch == best


def test_compare_against_a_reference_says_bitwise_or_what_differs(tmp_path):
  train.fit(tiny(num_epochs=2), tmp_path / "run", progress=False, log=_quiet)
  ref = restore.run_reference(tmp_path / "run")
  same = restore.compare_to_reference(tmp_path / "run", ref)
  assert same["verdict"] == "bitwise equal" and same["bitwise_equal"]
  assert same["provenance_differences"] == {}
  other = json.loads(json.dumps(ref))
  other["param_sha256"] = "0" * 64
  other["metrics"]["test_elbo"] += 0.5
  other["provenance"]["cpu_isa"] = ["sse4_2", "avx", "avx512f"]
  other["numerics"] = "portable"
  diff = restore.compare_to_reference(tmp_path / "run", other)
  assert not diff["bitwise_equal"]
  assert diff["verdict"] == ("differs: params differ, largest metric "
                             "difference 0.5")
  assert set(diff["provenance_differences"]) == {"cpu_isa", "numerics"}


@pytest.mark.slow
def test_portable_quickstart_matches_docs_reference(tmp_path):
  """The README's reference: experiments/quickstart.py in portable mode,
  bitwise on whatever x86-64 processor runs it (the reference was made on
  another one; tests/test_portable.py checks the same on emulated ones)."""
  reference = json.loads((REPO / "docs" / "reference" / "quickstart.json")
                         .read_text())
  workdir = tmp_path / "quickstart"
  subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"),
                  "--config", str(REPO / "experiments" / "quickstart.py"),
                  "--config.numerics=portable", "--noprogress", "--workdir",
                  str(workdir)], env=ENV, check=True, capture_output=True)
  result = restore.compare_to_reference(workdir, reference)
  assert result["bitwise_equal"], result
