"""Tests for vae.store.checkpoint: round trips, retention, corruption, crashes."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae.store.checkpoint import CheckpointError, Checkpoints, CheckpointWarning

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- helpers -------------------------------------------------------------------

def make_params(seed=0, hidden=32, data=48, latent=4):
  """A flax-like params dict with incompressible (random) float32 leaves."""
  rng = np.random.default_rng(seed)

  def dense(n_in, n_out):
    return {"kernel": jnp.asarray(rng.normal(size=(n_in, n_out)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(n_out,)), jnp.float32)}

  return {"Encoder_0": {"Dense_0": dense(data, hidden),
                        "Dense_1": dense(hidden, 2 * latent)},
          "Decoder_0": {"Dense_0": dense(latent, hidden),
                        "Dense_1": dense(hidden, data)}}


def adam():
  return optax.adam(1e-3)


def chained_injected_adam():
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.inject_hyperparams(optax.adam)(learning_rate=1e-3))


def make_state(seed=0, tx=adam, epoch=None, **kw):
  """{'params', 'opt_state', 'epoch'}: the real optax state structure, filled
  with seeded random values (cheaper than running eager updates)."""
  params = make_params(seed, **kw)
  rng = np.random.default_rng(seed + 1000)
  opt_state = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) if x.ndim else seed + 1,
                            x.dtype),
      tx().init(params))
  return {"params": params, "opt_state": opt_state,
          "epoch": jnp.int32(seed if epoch is None else epoch)}


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def assert_bitwise_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)  # incl. node types
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert isinstance(g, jax.Array)
    assert g.shape == w.shape and g.dtype == w.dtype
    assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


def step_dirs(directory):
  return sorted(int(p.name) for p in Path(directory).iterdir()
                if p.is_dir() and p.name.isdigit())


@contextlib.contextmanager
def strict_warnings():
  """Context in which a CheckpointWarning fails the test."""
  with warnings.catch_warnings():
    warnings.simplefilter("error", CheckpointWarning)
    yield


# -- round trip ----------------------------------------------------------------

@pytest.mark.parametrize("tx", [adam, chained_injected_adam],
                         ids=["adam", "chain_clip_inject_adam"])
def test_round_trip_is_bitwise_and_keeps_structure(tmp_path, tx):
  state = make_state(3, tx)
  directory = tmp_path / "runs" / "x" / "checkpoints"  # created on demand
  with Checkpoints(directory) as ckpts:
    ckpts.save(1, state, metrics={"test_elbo": -90.5})
    assert ckpts.epochs() == [1] and ckpts.metrics(1) == {"test_elbo": -90.5}
    for like in (state, abstract(state)):
      epoch, got = ckpts.restore(like)
      assert epoch == 1
      assert_bitwise_equal(got, state)
  with Checkpoints(directory) as ckpts:  # a fresh process's view
    epoch, got = ckpts.restore(abstract(state))
  assert epoch == 1
  assert_bitwise_equal(got, state)
  if tx is adam:
    assert isinstance(got["opt_state"][0], optax.ScaleByAdamState)
    assert isinstance(got["opt_state"][1], optax.EmptyState)
  else:
    assert isinstance(got["opt_state"][1], optax.InjectStatefulHyperparamsState)
    assert isinstance(got["opt_state"][1].inner_state[0], optax.ScaleByAdamState)
  assert got["epoch"].dtype == jnp.int32 and got["epoch"].shape == ()

  # The untouched `tx.init(params)` state (zeros, the real hyperparameters).
  params = make_params(5)
  fresh = {"params": params, "opt_state": tx().init(params), "epoch": jnp.int32(0)}
  with Checkpoints(directory) as ckpts:
    ckpts.save(2, fresh, metrics={"test_elbo": -80.0})
    epoch, got = ckpts.restore(abstract(fresh))
  assert epoch == 2
  assert_bitwise_equal(got, fresh)


def test_the_integrity_record_is_stored_under_its_fixed_key(tmp_path):
  # The on-disk format: Orbax's step metadata holds the record under
  # "vae.checkpoint" (a module move once renamed the key, and no checkpoint
  # written before it could be read). Its fields name every leaf.
  state = make_state(0)
  with Checkpoints(tmp_path / "c", keep_latest=1) as ckpts:
    ckpts.save(1, state, metrics={"test_elbo": -1.0})
  meta = json.loads((tmp_path / "c" / "1" / "_CHECKPOINT_METADATA").read_text())
  assert list(meta["custom_metadata"]) == ["vae.checkpoint"]
  record = meta["custom_metadata"]["vae.checkpoint"]
  assert (record["format"], record["epoch"], record["metrics"]) == (
      1, 1, {"test_elbo": -1.0})
  assert "params/w" in record["leaves"] or any(
      k.startswith("params/") for k in record["leaves"])


def test_round_trip_dtypes_and_special_values(tmp_path):
  state = {
      "f32": jnp.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], jnp.float32),
      "bf16": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) / 3,
      "i8": jnp.array([-128, 0, 127], jnp.int8),
      "u32": jnp.array([0, 2**32 - 1], jnp.uint32),
      "np_scalar": np.int32(5),  # numpy leaves are saved as jax arrays
      "np_array": np.linspace(0, 1, 5, dtype=np.float32),
      "empty": jnp.zeros((0, 3), jnp.float32),
  }
  with Checkpoints(tmp_path) as ckpts:
    ckpts.save(4, state, metrics={})
    _, got = ckpts.restore(state)
  want = jax.tree.map(jnp.asarray, state)
  assert_bitwise_equal(got, want)
  assert ckpts.metrics(4) == {}


def test_restore_casts_to_the_dtype_of_like(tmp_path):
  state = {"w": jnp.linspace(-1, 1, 7, dtype=jnp.float32)}
  with Checkpoints(tmp_path) as ckpts:
    ckpts.save(1, state, metrics={"test_elbo": 0.0})
    _, got = ckpts.restore({"w": jax.ShapeDtypeStruct((7,), jnp.bfloat16)})
  assert got["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(got["w"], state["w"].astype(jnp.bfloat16))


# -- retention -----------------------------------------------------------------

def test_retention_keeps_latest_and_best(tmp_path):
  elbo = {1: -120.0, 2: -95.0, 3: -101.0, 4: -99.0, 5: -100.0, 6: -98.0}
  with Checkpoints(tmp_path, keep_latest=2, keep_best=1) as ckpts:
    for epoch in range(1, 7):
      ckpts.save(epoch, make_state(epoch), metrics={"test_elbo": elbo[epoch],
                                                    "test_kl": 1.0 * epoch})
      # Garbage collection is done (on disk) by the time save() returns.
      assert step_dirs(tmp_path) == ckpts.epochs()
    assert ckpts.epochs() == [2, 5, 6]
    assert ckpts.best_epoch() == 2 and ckpts.latest_epoch() == 6
    assert ckpts.metrics(2) == {"test_elbo": -95.0, "test_kl": 2.0}
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "3"))):
      ckpts.metrics(3)
  with Checkpoints(tmp_path, keep_latest=2, keep_best=1) as ckpts:  # reopened
    assert ckpts.epochs() == [2, 5, 6] and ckpts.best_epoch() == 2
    epoch, got = ckpts.restore(make_state(0), epoch=2)
  assert epoch == 2
  assert_bitwise_equal(got, make_state(2))


def test_retention_min_mode_and_non_finite_metrics(tmp_path):
  loss = {1: 5.0, 2: float("nan"), 3: 2.0, 4: 3.0, 5: 4.0, 6: float("inf")}
  with Checkpoints(tmp_path, keep_latest=1, keep_best=2, best_metric="loss",
                   best_mode="min") as ckpts:
    for epoch in range(1, 7):
      ckpts.save(epoch, {"x": jnp.float32(epoch)}, metrics={"loss": loss[epoch]})
    assert ckpts.epochs() == [3, 4, 6]  # best two (3, 4) + latest (6)
    assert ckpts.best_epoch() == 3
  with Checkpoints(tmp_path / "none", keep_latest=3) as ckpts:
    assert ckpts.epochs() == [] and ckpts.latest_epoch() is None
    assert ckpts.best_epoch() is None
    ckpts.save(1, {"x": jnp.float32(1)}, metrics={"other": 1.0})
    assert ckpts.best_epoch() is None  # no 'test_elbo' recorded


def test_invalid_arguments(tmp_path):
  with pytest.raises(ValueError):
    Checkpoints(tmp_path, best_mode="best")
  with pytest.raises(ValueError):
    Checkpoints(tmp_path, keep_latest=0, keep_best=0)


# -- restore -------------------------------------------------------------------

def test_restore_latest_or_given_epoch(tmp_path):
  with Checkpoints(tmp_path, keep_latest=5) as ckpts:
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
      ckpts.restore(make_state(0))
    for epoch in (1, 2, 3):
      ckpts.save(epoch, make_state(epoch), metrics={"test_elbo": -float(epoch)})
    like = abstract(make_state(0))
    epoch, got = ckpts.restore(like)
    assert epoch == 3
    assert_bitwise_equal(got, make_state(3))
    for k in (1, 2, 3):
      epoch, got = ckpts.restore(like, epoch=k)
      assert epoch == k
      assert_bitwise_equal(got, make_state(k))
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "7"))):
      ckpts.restore(like, epoch=7)


def test_saving_an_earlier_epoch_supersedes_later_ones(tmp_path):
  with Checkpoints(tmp_path, keep_latest=5) as ckpts:
    for epoch in (1, 2, 3):
      ckpts.save(epoch, make_state(epoch), metrics={"test_elbo": 0.0})
    with pytest.warns(CheckpointWarning, match="supersedes"):
      ckpts.save(2, make_state(20), metrics={"test_elbo": 1.0})
    assert ckpts.epochs() == [1, 2]
    epoch, got = ckpts.restore(make_state(0))
  assert epoch == 2
  assert_bitwise_equal(got, make_state(20))


def test_shape_mismatch_names_parameter_and_both_shapes(tmp_path):
  def state(hidden):
    params = {"Dense_0": {"kernel": jnp.zeros((784, hidden)),
                          "bias": jnp.zeros((hidden,))}}
    return {"params": params, "opt_state": optax.adam(1e-3).init(params)}

  with Checkpoints(tmp_path) as ckpts:
    ckpts.save(1, state(400), metrics={"test_elbo": -1.0})
    ckpts.save(2, state(400), metrics={"test_elbo": -1.0})
    with strict_warnings():  # no fallback to older epochs: it is not corruption
      with pytest.raises(CheckpointError) as err:
        ckpts.restore(abstract(state(512)))
  msg = str(err.value)
  assert str(tmp_path / "2") in msg
  assert "params/Dense_0/kernel: checkpoint (784, 400) vs model (784, 512)" in msg
  assert "params/Dense_0/bias: checkpoint (400,) vs model (512,)" in msg
  assert "opt_state/0/mu/Dense_0/kernel: checkpoint (784, 400) vs model (784, 512)" in msg


def test_structure_mismatch_names_leaves(tmp_path):
  with Checkpoints(tmp_path) as ckpts:
    ckpts.save(1, {"a": jnp.zeros(2), "b": {"c": jnp.ones(3)}}, metrics={})
    with pytest.raises(CheckpointError, match=r"not in checkpoint: b/d.*not in model: b/c"):
      ckpts.restore({"a": jnp.zeros(2), "b": {"d": jnp.ones(3)}})


# -- corruption ----------------------------------------------------------------
# (Reading a corrupt checkpoint leaves orbax-internal asyncio tasks with
# unretrieved exceptions; pytest reports those as "unraisable" warnings.)

def _largest_file(directory):
  files = [p for p in Path(directory).rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


CORRUPT_TARGETS = {
    "array_data": lambda d: _largest_file(d / "state"),
    "ocdbt_manifest": lambda d: d / "state" / "manifest.ocdbt",
    "pytree_metadata": lambda d: d / "state" / "_METADATA",
    "step_metadata": lambda d: d / "_CHECKPOINT_METADATA",  # holds the checksums
    "metrics": lambda d: d / "metrics" / "metrics",
}


def corrupt(path, how):
  data = path.read_bytes()
  if how == "truncate":
    path.write_bytes(data[: len(data) // 2])
  elif how == "flip":
    i = len(data) // 2
    path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
  elif how == "delete":
    path.unlink()
  else:
    raise ValueError(how)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax-internal
@pytest.mark.parametrize("target,how", [
    *[("array_data", how) for how in ("truncate", "flip", "delete")],
    *[("step_metadata", how) for how in ("truncate", "flip", "delete")],
    ("metrics", "truncate"), ("metrics", "delete"),
    ("pytree_metadata", "flip"), ("ocdbt_manifest", "truncate"),
])
def test_corrupt_latest_falls_back_to_previous(tmp_path, target, how):
  with Checkpoints(tmp_path, keep_latest=3) as ckpts:
    ckpts.save(1, make_state(1), metrics={"test_elbo": -2.0})
    ckpts.save(2, make_state(2), metrics={"test_elbo": -1.0})
  victim = CORRUPT_TARGETS[target](tmp_path / "2")
  assert victim.is_file() and victim.stat().st_size > 0
  corrupt(victim, how)

  # A new process opens the run and resumes: warned, falls back to epoch 1.
  with pytest.warns(CheckpointWarning, match=re.escape(str(tmp_path / "2"))) as rec:
    ckpts = Checkpoints(tmp_path, keep_latest=3)
    epoch, got = ckpts.restore(abstract(make_state(0)))
  assert epoch == 1
  assert_bitwise_equal(got, make_state(1))
  if target == "array_data" and how == "flip":
    # TensorStore reads this back without error; only the checksum catches it.
    assert any("sha256" in str(w.message) for w in rec)
  # Training goes on from epoch 1 and re-saves epoch 2 over the corrupt one.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", CheckpointWarning)
    ckpts.save(2, make_state(22), metrics={"test_elbo": -1.0})
  with strict_warnings():
    epoch, got = ckpts.restore(abstract(make_state(0)))
  assert epoch == 2
  assert_bitwise_equal(got, make_state(22))
  ckpts.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax-internal
def test_corruption_detected_in_the_same_session(tmp_path):
  with Checkpoints(tmp_path, keep_latest=3) as ckpts:
    for epoch in (1, 2, 3):
      ckpts.save(epoch, make_state(epoch), metrics={"test_elbo": 0.0})
    corrupt(CORRUPT_TARGETS["array_data"](tmp_path / "3"), "flip")
    corrupt(CORRUPT_TARGETS["array_data"](tmp_path / "2"), "truncate")
    with pytest.warns(CheckpointWarning) as rec:
      epoch, got = ckpts.restore(make_state(0))
    assert epoch == 1
    assert_bitwise_equal(got, make_state(1))
    messages = [str(w.message) for w in rec]
    assert any(str(tmp_path / "3") in m for m in messages)
    assert any(str(tmp_path / "2") in m for m in messages)
    # An explicitly requested corrupt epoch is an error, not a fallback.
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "3"))):
      ckpts.restore(make_state(0), epoch=3)
    corrupt(CORRUPT_TARGETS["array_data"](tmp_path / "1"), "delete")
    with pytest.warns(CheckpointWarning):
      with pytest.raises(CheckpointError, match="no valid checkpoint"):
        ckpts.restore(make_state(0))


@pytest.mark.parametrize("tmp_name", ["3.orbax-checkpoint-tmp",
                                      "3.orbax-checkpoint-tmp-1700000000"])
def test_uncommitted_checkpoint_is_ignored(tmp_path, tmp_name):
  with Checkpoints(tmp_path, keep_latest=5) as ckpts:
    ckpts.save(1, make_state(1), metrics={"test_elbo": 0.0})
    ckpts.save(2, make_state(2), metrics={"test_elbo": 0.0})
  # What a SIGKILL in the middle of writing epoch 3 leaves behind: the
  # temporary directory, partly written (here: a truncated copy).
  partial = tmp_path / tmp_name
  shutil.copytree(tmp_path / "2", partial)
  corrupt(_largest_file(partial / "state"), "truncate")
  (partial / "commit_success.txt").unlink()

  with strict_warnings():
    with Checkpoints(tmp_path, keep_latest=5) as ckpts:
      assert ckpts.epochs() == [1, 2] and ckpts.latest_epoch() == 2
      epoch, got = ckpts.restore(make_state(0))
      assert epoch == 2
      assert_bitwise_equal(got, make_state(2))
      ckpts.save(3, make_state(3), metrics={"test_elbo": 0.0})
      assert ckpts.epochs() == [1, 2, 3]
      epoch, got = ckpts.restore(make_state(0))
  assert epoch == 3
  assert_bitwise_equal(got, make_state(3))
  assert not partial.exists()  # cleaned up


# -- crash safety: a real SIGKILL ---------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    from test_checkpoint import make_state
    from vae.store.checkpoint import Checkpoints

    ckpts = Checkpoints({directory!r}, keep_latest=2, keep_best=1)
    epoch = (ckpts.latest_epoch() or 0) + 1
    while True:
      ckpts.save(epoch, make_state(epoch, hidden=192, data=256),
                 metrics={{"test_elbo": float((epoch * 7919) % 13)}})
      print("saved", epoch, flush=True)
      epoch += 1
""")


def test_sigkill_during_saves_leaves_a_restorable_checkpoint(tmp_path):
  directory = tmp_path / "checkpoints"
  script = tmp_path / "child.py"
  script.write_text(CHILD.format(repo=str(REPO_ROOT), tests=str(Path(__file__).parent),
                                 directory=str(directory)))
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  rng = np.random.default_rng(20240607)
  like = abstract(make_state(0, hidden=192, data=256))
  for _ in range(3):
    with open(tmp_path / "child.err", "w") as err:
      child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=err, env=env, text=True)
    try:
      first = child.stdout.readline()  # imports done, one save completed
      assert first.startswith("saved"), (tmp_path / "child.err").read_text()[-3000:]
      time.sleep(rng.uniform(0.0, 0.5))
      os.kill(child.pid, signal.SIGKILL)
    finally:
      child.kill()
      child.wait()
    reported = [int(line.split()[1]) for line in [first, *child.stdout] if line.strip()]
    child.stdout.close()
    last_saved = reported[-1]

    with strict_warnings():  # the newest committed checkpoint is intact
      with Checkpoints(directory, keep_latest=2, keep_best=1) as ckpts:
        assert all(isinstance(e, int) for e in ckpts.epochs())
        epoch, got = ckpts.restore(like)
    # save() had returned for last_saved; the next one may have committed too.
    assert last_saved <= epoch <= last_saved + 1
    assert_bitwise_equal(got, make_state(epoch, hidden=192, data=256))
