"""vae.sweep.shards and vae.sweep.launch: a sweep split into shards, trained as separate
processes (scripts/sweep.py --shard, and submitit's local executor), is
bitwise the sweep trained in one process; a killed shard re-run alone ends
the same; the merged report equals the single-process one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from vae.sweep import grouping, launch, report, runner, shards
from vae.store import restore, runs
from vae.errors import ConfigError

pytestmark = pytest.mark.fault

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
OVERRIDES = {"hidden_sizes": (32,), "latent_dim": 2, "batch_size": 200,
             "num_epochs": 3}
SWEEP = [sys.executable, str(REPO / "scripts" / "sweep.py"), "--config",
         str(REPO / "experiments" / "beta_sweep.py:small"), "--noprogress",
         "--config.hidden_sizes=(32,)", "--config.latent_dim=2",
         "--config.batch_size=200", "--config.num_epochs=3",
         "--config.sweep.beta=(1.0,4.0)", "--config.sweep.seed=(0,1)"]


def small_sweep():
  """beta_sweep.py:small at the test's size: 4 members, one shape group."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "beta_sweep", REPO / "experiments" / "beta_sweep.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("small")
  for k, v in OVERRIDES.items():
    config[k] = v
  config.sweep.beta, config.sweep.seed = (1.0, 4.0), (0, 1)
  return config


def strip(records):
  return [{k: v for k, v in r.items() if not k.endswith("_s")}
          for r in records]


def assert_same_sweep(a: Path, b: Path) -> None:
  members = sorted(m.name for m in runs.member_dirs(a))
  assert members == sorted(m.name for m in runs.member_dirs(b))
  for name in members:
    assert strip(runs.read_metrics(a / name)) == strip(
        runs.read_metrics(b / name)), name
    pa = jax.tree_util.tree_leaves(restore.load_run(a / name, "latest").params)
    pb = jax.tree_util.tree_leaves(restore.load_run(b / name, "latest").params)
    for x, y in zip(pa, pb, strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def report_rows(sweep_dir: Path):
  rows = json.loads((sweep_dir / runs.REPORT_JSON).read_text())
  return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def shard_members(index: int, count: int = 2) -> list[str]:
  """The member names shard ``index`` of ``count`` trains."""
  return [n for b in shards.plan(small_sweep(), count)[index] for n, _ in b]


def wait_for_first_epoch(proc, workdir: Path, names, every=any,
                         timeout: float = 120) -> None:
  """Until ``every`` (any/all) of ``names`` has an epoch recorded, or
  ``proc`` ends, or ``timeout`` seconds pass."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if every(len(runs.read_metrics(workdir / n)) >= 1 for n in names):
      return
    time.sleep(0.05)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The sweep trained in one process (in this one: a member's bits do not
  depend on the process or the device split), with its report."""
  workdir = tmp_path_factory.mktemp("one") / "sweep"
  rows = runner.run_sweep(small_sweep(), workdir, progress=False,
                          log=lambda s: None)
  runner.write_report(rows, workdir)
  return workdir


def test_shards_trained_one_after_another_equal_one_process(tmp_path,
                                                            one_process):
  # The shards of a plan, each an ordinary run of its blocks (here in this
  # process; the tests below start them as processes and through
  # submitit): together bitwise the one-process sweep, and so is the
  # merged report.
  workdir = tmp_path / "sweep"
  config = small_sweep()
  trained = []
  for index in range(2):
    rows = runner.run_sweep(config, workdir, progress=False,
                            log=lambda s: None, shard=shards.Shard(index, 2))
    trained += [r["member"] for r in rows]
    assert [r["member"] for r in rows] == shard_members(index)
    if index == 0:  # the other shard's members are not there yet
      status = {r["member"]: r["status"]
                for r in report.sweep_rows(workdir, config)}
      assert {status[n] for n in shard_members(1)} == {"missing"}
      assert {status[n] for n in shard_members(0)} == {"finished"}
  assert sorted(trained) == sorted(m.name for m in runs.member_dirs(
      one_process))
  runner.write_report(report.sweep_rows(workdir), workdir)
  assert_same_sweep(workdir, one_process)
  assert report_rows(workdir) == report_rows(one_process)


def test_plan_is_deterministic_disjoint_and_complete():
  config = small_sweep()
  names = [n for n, _ in grouping.members(config)]
  for count in (1, 2, 3, 5):
    plan = shards.plan(config, count)
    assert plan == shards.plan(config, count)  # the same in every process
    got = [n for blocks in plan for block in blocks for n, _ in block]
    assert sorted(got) == sorted(names) and len(got) == len(names)
  # One group of 4: 2 shards take 2 members each; 3 shards get 1, 1 and 2.
  assert [[len(b) for b in s] for s in shards.plan(config, 2)] == [[2], [2]]
  assert sorted(sum(len(b) for b in s) for s in shards.plan(config, 3)) == [
      1, 1, 2]
  # More shards than members: the extra shards have nothing to do.
  assert sum(1 for s in shards.plan(config, 5) if s) == 4


def test_shard_from_flag_and_scheduler_environment():
  assert shards.parse_shard("1/3") == shards.Shard(1, 3)
  for bad in ("3/3", "1", "-1/2", "a/b"):
    with pytest.raises(ConfigError, match="--shard"):
      shards.parse_shard(bad)
  assert shards.shard_from_environment({}) is None
  assert shards.shard_from_environment(
      {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}) == (2, 4)
  assert shards.shard_from_environment(
      {"JOB_COMPLETION_INDEX": "0", "VAE_SHARD_COUNT": "2"}) == (0, 2)
  with pytest.raises(ConfigError, match="VAE_SHARD_COUNT"):
    shards.shard_from_environment({"JOB_COMPLETION_INDEX": "0"})


# The multi-process shard checks start several JAX processes each (minutes
# on 2 cores): in the slow suite, which CI runs too.
@pytest.mark.slow
@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_shards_through_submitit_equal_one_process(
    tmp_path, one_process, count):
  pytest.importorskip("submitit")
  workdir = tmp_path / "sweep"
  rows = launch.launch(small_sweep(), workdir, count, executor="local",
                       parameters={"timeout_min": 30}, log=lambda s: None)
  assert [r["status"] for r in rows] == ["finished"] * 4
  assert_same_sweep(workdir, one_process)
  # The merged report (written once, by the launcher) equals the
  # single-process one, but for wall times.
  assert report_rows(workdir) == report_rows(one_process)


@pytest.mark.slow
def test_a_shard_killed_mid_run_then_rerun_alone_ends_bitwise(
    tmp_path, one_process):
  workdir = tmp_path / "sweep"
  subprocess.run(SWEEP + ["--workdir", str(workdir), "--shard", "1/2"],
                 env=ENV, check=True, capture_output=True)
  victim = subprocess.Popen(SWEEP + ["--workdir", str(workdir), "--shard",
                                     "0/2", "--config.num_epochs=3"],
                            env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
  wait_for_first_epoch(victim, workdir, shard_members(0), every=any)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  out = subprocess.run(SWEEP + ["--workdir", str(workdir), "--shard", "0/2"],
                       env=ENV, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert "--report" in out.stdout  # a shard writes no report itself
  assert not (workdir / runs.REPORT_JSON).exists()
  rep = subprocess.run(SWEEP + ["--workdir", str(workdir), "--report"],
                       env=ENV, capture_output=True, text=True)
  assert rep.returncode == 0, rep.stderr
  assert_same_sweep(workdir, one_process)
  assert report_rows(workdir) == report_rows(one_process)


@pytest.mark.slow
def test_report_names_missing_members_and_sigterm_to_a_shard_exits_75(
    tmp_path):
  workdir = tmp_path / "sweep"
  proc = subprocess.Popen(SWEEP + ["--workdir", str(workdir), "--shard",
                                   "0/2", "--config.num_epochs=300"],
                          env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  mine = shard_members(0)
  wait_for_first_epoch(proc, workdir, mine, every=all)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err
  rep = subprocess.run(SWEEP + ["--workdir", str(workdir), "--report",
                                "--config.num_epochs=300"],
                       env=ENV, capture_output=True, text=True)
  assert rep.returncode == 0, rep.stderr
  rows = {r["member"]: r["status"] for r in report.sweep_rows(workdir)}
  other = shard_members(1)
  assert {rows[n] for n in mine} == {"unfinished"}
  assert {rows[n] for n in other} == {"missing"}
  assert "not finished: " in rep.stdout


@pytest.mark.slow
def test_launcher_retries_a_failed_shard_then_a_resubmission_finishes(
    tmp_path, one_process):
  """A shard that cannot train (another process holds one of its members'
  locks) fails on every attempt: the launcher re-submits it max_retries
  times, then says which shard failed; once the lock is gone, the same
  launch trains only what is unfinished and equals the one-process sweep."""
  pytest.importorskip("submitit")
  from vae.errors import RunError
  workdir = tmp_path / "sweep"
  config = small_sweep()
  blocked = shards.plan(config, 2)[1][0][0][0]  # a member of shard 1
  (workdir / blocked).mkdir(parents=True)
  said = []
  with runs.WorkdirLock(workdir / blocked):
    with pytest.raises(RunError, match=r"shards \[1\] of 2 failed after 1 "
                       "retries"):
      launch.launch(config, workdir, 2, executor="local", max_retries=1,
                    parameters={"timeout_min": 30}, log=said.append)
  assert sum("submitted shards" in s for s in said) == 2  # first try + 1 retry
  failures = [s for s in said if "shard 1/2 failed" in s]
  assert len(failures) == 2, said
  log = Path(failures[0].rsplit("(log: ", 1)[1].rstrip(")"))
  assert "in use by another run" in log.read_text()  # the shard's own error
  said.clear()
  rows = launch.launch(config, workdir, 2, executor="local",
                       parameters={"timeout_min": 30}, log=said.append)
  assert [r["status"] for r in rows] == ["finished"] * 4
  assert_same_sweep(workdir, one_process)
