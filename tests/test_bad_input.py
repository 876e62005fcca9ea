"""Bad input to every script gets one line and exit status 2, and changes
nothing; a closed standard output ends a script quietly (issue 28); the
one-line refusals of issue 29; compare.py's exit statuses (issue 22).

The matrix: every script x the classes of bad file or directory argument
it can be given (missing, empty, truncated, the wrong JSON type, the wrong
keys, a directory where a file is expected, a file where a directory is
expected), each asserting status 2, one ``error:`` line on stderr naming the
path and what was expected, no traceback, and the whole tree of inputs (and
where outputs would go) byte-identical before and after. The cases run
in-process (``script_harness``: a fraction of a second each); the closed-pipe
checks also run as real processes, all seven scripts at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from script_harness import REPO, SCRIPTS, run_script
from vae import cli, inputs
from vae.store import restore, runs
from vae.sweep import report
from vae.train import loop as train
from vae import config as config_lib

pytestmark = pytest.mark.fault

EXPERIMENTS = REPO / "experiments"
QUICKSTART = EXPERIMENTS / "quickstart.py"
BETA_SWEEP = f"{EXPERIMENTS / 'beta_sweep.py'}:small"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}


def _tiny(**overrides):
  return config_lib.with_fields(**{"hidden_sizes": (32,), "latent_dim": 2,
                                   "batch_size": 200, "num_epochs": 1,
                                   **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Two one-epoch runs of the tiny model, seeds 0 and 1 (read, never
  changed: every case hashes them)."""
  root = tmp_path_factory.mktemp("trained")
  for seed in (0, 1):
    train.fit(_tiny(seed=seed), root / f"seed{seed}", progress=False,
              log=lambda s: None)
  return root


def tree_digest(*roots: Path) -> str:
  """sha256 over every path under ``roots`` (names, kinds and bytes)."""
  digest = hashlib.sha256()
  for root in roots:
    for path in sorted([root, *root.rglob("*")]):
      digest.update(str(path).encode())
      if path.is_file():
        digest.update(b"f" + hashlib.sha256(path.read_bytes()).digest())
      else:
        digest.update(b"d")
  return digest.hexdigest()


CONFIG_JSON_DAMAGE = {
    "empty": ("", "is empty"),
    "truncated": (None, "is not complete JSON (truncated or damaged"),
    "wrong_type": ("[1, 2]\n", "holds a JSON list, not an object"),
    "wrong_keys": ('{"foo": 1}\n', "lacks the keys 'dataset', 'architecture'"),
}


@pytest.fixture
def bad(tmp_path, trained):
  """Every kind of bad file and directory, under ``tmp_path``."""
  b = tmp_path
  (b / "empty.json").write_text("")
  (b / "truncated.json").write_text('{"epoch": 1, "param_sha')
  (b / "list.json").write_text("[1, 2]\n")
  (b / "keyless.json").write_text('{"a": 1}\n')
  (b / "a_dir").mkdir()
  (b / "a_file").write_text("not a directory\n")
  (b / "empty.py").write_text("")
  (b / "truncated.py").write_text(QUICKSTART.read_text()[:200])
  (b / "list.py").write_text("def get_config():\n  return [1, 2]\n")
  (b / "keyless.py").write_text(
      "import ml_collections\n\ndef get_config():\n"
      "  return ml_collections.ConfigDict({'foo': 1})\n")
  good = (trained / "seed0" / runs.CONFIG_FILE).read_text()
  for kind, (text, _) in CONFIG_JSON_DAMAGE.items():
    run = b / f"run_{kind}"  # a run directory whose config.json is damaged
    run.mkdir()
    (run / runs.CONFIG_FILE).write_text(good[:len(good) // 2]
                                        if text is None else text)
    sweep = b / f"sweep_{kind}"  # the same for a sweep's sweep_config.json
    sweep.mkdir()
    (sweep / runs.SWEEP_CONFIG_FILE).write_text(
        (run / runs.CONFIG_FILE).read_text())
    (b / f"soak_{kind}").mkdir()
    shutil.copytree(run, b / f"soak_{kind}" / "soaked")
  (b / "run_config_dir" / runs.CONFIG_FILE).mkdir(parents=True)
  for name in ("no_checkpoints", "checkpoints_file"):
    shutil.copytree(trained / "seed0", b / name)
    shutil.rmtree(b / name / runs.CHECKPOINT_DIR)
  (b / "checkpoints_file" / runs.CHECKPOINT_DIR).write_text("x")
  images = np.zeros((3, 28, 28), np.uint8)
  np.save(b / "good.npy", images)
  (b / "truncated.npy").write_bytes((b / "good.npy").read_bytes()[:100])
  (b / "empty.npy").write_bytes(b"")
  np.save(b / "strings.npy", np.array(["a", "b"]))
  np.savez(b / "keyless.npz", foo=images, bar=np.zeros(3))
  (b / "dir.npy").mkdir()
  return b


RUN = "{trained}/seed0"
PARTS = " ... "  # a message's parts, in this order
# (script, class, arguments, what the one line says: parts separated by
# PARTS, in order); {bad} and {trained} are the fixtures' directories.
CASES = [
    # train.py: the experiment config file, and the run directory.
    ("train.py", "missing", "--config {bad}/missing.py --workdir {bad}/new",
     "--config='{bad}/missing.py' does not exist; expected an experiment "
     "config file"),
    ("train.py", "empty", "--config {bad}/empty.py --workdir {bad}/new",
     "--config='{bad}/empty.py' could not be loaded: defines no "
     "get_config()"),
    ("train.py", "truncated", "--config {bad}/truncated.py --workdir {bad}/new",
     "--config='{bad}/truncated.py' could not be loaded: unterminated"),
    ("train.py", "wrong_type", "--config {bad}/list.py --workdir {bad}/new",
     "--config='{bad}/list.py' could not be loaded: get_config() returned "
     "'list', not a ml_collections.ConfigDict"),
    ("train.py", "wrong_keys", "--config {bad}/keyless.py --workdir {bad}/new",
     "config.foo=1 is not accepted: a known field"),
    ("train.py", "dir_for_file", "--config {bad}/a_dir --workdir {bad}/new",
     "--config='{bad}/a_dir' is a directory; expected an experiment config "
     "file"),
    ("train.py", "file_for_dir", "--config {quickstart} --workdir {bad}/a_file",
     "{bad}/a_file is a file, not a directory; expected a run directory"),
    *[("train.py", f"{kind}_config.json",
       "--config {quickstart} --workdir {bad}/run_" + kind,
       "{bad}/run_" + kind + "/config.json " + fragment)
      for kind, (_, fragment) in CONFIG_JSON_DAMAGE.items()],
    # sweep.py: the sweep config file, the sweep directory.
    ("sweep.py", "missing", "--config {bad}/missing.py --workdir {bad}/new",
     "--config='{bad}/missing.py' does not exist"),
    ("sweep.py", "empty", "--config {bad}/empty.py --workdir {bad}/new",
     "defines no get_config()"),
    ("sweep.py", "truncated", "--config {bad}/truncated.py --workdir {bad}/new",
     "could not be loaded: unterminated"),
    ("sweep.py", "wrong_type", "--config {bad}/list.py --workdir {bad}/new",
     "returned 'list'"),
    ("sweep.py", "wrong_keys", "--config {bad}/keyless.py --workdir {bad}/new",
     "config.sweep is missing"),
    ("sweep.py", "dir_for_file", "--config {bad}/a_dir --workdir {bad}/new",
     "--config='{bad}/a_dir' is a directory"),
    ("sweep.py", "file_for_dir", "--config {beta_sweep} --workdir {bad}/a_file",
     "{bad}/a_file is a file, not a directory; expected a sweep directory"),
    *[("sweep.py", f"{kind}_sweep_config.json",
       "--config {beta_sweep} --workdir {bad}/sweep_" + kind,
       "{bad}/sweep_" + kind + "/sweep_config.json " + (
           "lacks the keys 'dataset'" if kind == "wrong_keys" else fragment))
      for kind, (_, fragment) in CONFIG_JSON_DAMAGE.items()],
    # evaluate.py: the run (or sweep) directory, --data, the checkpoints.
    ("evaluate.py", "missing", "--workdir {bad}/missing --k 2",
     "{bad}/missing does not exist; expected a run directory"),
    *[("evaluate.py", f"{kind}_config.json", "--workdir {bad}/run_" + kind,
       "{bad}/run_" + kind + "/config.json " + fragment)
      for kind, (_, fragment) in CONFIG_JSON_DAMAGE.items()],
    ("evaluate.py", "file_for_dir", "--workdir {bad}/a_file",
     "{bad}/a_file is a file, not a directory; expected a run directory"),
    ("evaluate.py", "missing_data", f"--workdir {RUN} --data {{bad}}/no.npy",
     "{bad}/no.npy does not exist; expected an images file"),
    ("evaluate.py", "empty_data", f"--workdir {RUN} --data {{bad}}/empty.npy",
     "Cannot read '{bad}/empty.npy'"),
    ("evaluate.py", "truncated_data",
     f"--workdir {RUN} --data {{bad}}/truncated.npy",
     "Cannot read '{bad}/truncated.npy'"),
    ("evaluate.py", "wrong_type_data",
     f"--workdir {RUN} --data {{bad}}/strings.npy",
     "'{bad}/strings.npy': images have shape [2]"),
    ("evaluate.py", "wrong_keys_data",
     f"--workdir {RUN} --data {{bad}}/keyless.npz",
     "'{bad}/keyless.npz' holds arrays ['bar', 'foo']"),
    ("evaluate.py", "dir_for_file", f"--workdir {RUN} --data {{bad}}/dir.npy",
     "{bad}/dir.npy is a directory; expected an images file"),
    ("evaluate.py", "missing_checkpoints", "--workdir {bad}/no_checkpoints",
     "{bad}/no_checkpoints has no checkpoint yet (no checkpoints/ directory)"),
    ("evaluate.py", "file_for_dir_checkpoints",
     "--workdir {bad}/checkpoints_file",
     "{bad}/checkpoints_file/checkpoints is a file, not a directory; "
     "expected the run's checkpoint directory"),
    # plot.py: the run (or sweep) directory, --baseline.
    ("plot.py", "missing", "--workdir {bad}/missing",
     "--workdir='{bad}/missing' is not accepted: neither a run directory"),
    *[("plot.py", f"{kind}_config.json", "--workdir {bad}/run_" + kind,
       "{bad}/run_" + kind + "/config.json " + fragment)
      for kind, (_, fragment) in CONFIG_JSON_DAMAGE.items()],
    ("plot.py", "dir_for_file", "--workdir {bad}/run_config_dir",
     "--workdir='{bad}/run_config_dir' is not accepted: neither a run"),
    ("plot.py", "file_for_dir", "--workdir {bad}/a_file",
     "--workdir='{bad}/a_file' is not accepted: neither a run directory"),
    ("plot.py", "file_for_dir_baseline",
     f"--workdir {RUN} --baseline {{bad}}/a_file",
     "{bad}/a_file is a file, not a directory; expected a run directory"),
    ("plot.py", "missing_checkpoints", "--workdir {bad}/no_checkpoints",
     "{bad}/no_checkpoints has no checkpoint yet"),
    # compare.py: the reference file, the runs, the file it writes.
    *[("compare.py", f"{kind}_reference", f"--reference {{bad}}/{name} {RUN}",
       f"--reference='{{bad}}/{name}' {fragment}{PARTS}; expected a "
       "reference file: a JSON object with 'epoch', 'param_sha256', "
       "'metrics' and 'provenance'")
      for kind, name, fragment in [
          ("missing", "missing.json", "does not exist"),
          ("empty", "empty.json", "is empty"),
          ("truncated", "truncated.json", "is not complete JSON (truncated"),
          ("wrong_type", "list.json", "holds a JSON list, not an object"),
          ("wrong_keys", "keyless.json", "lacks the keys 'epoch', "
           "'param_sha256', 'metrics', 'provenance'"),
          ("dir_for_file", "a_dir", "is a directory")]],
    ("compare.py", "missing", f"{{bad}}/missing {RUN}",
     "{bad}/missing does not exist; expected a run directory"),
    ("compare.py", "file_for_dir", f"{{bad}}/a_file {RUN}",
     "{bad}/a_file is a file, not a directory; expected a run directory"),
    *[("compare.py", f"{kind}_config.json", f"{RUN} {{bad}}/run_{kind}",
       "{bad}/run_" + kind + "/config.json " + fragment)
      for kind, (_, fragment) in CONFIG_JSON_DAMAGE.items()],
    ("compare.py", "dir_for_file_write", f"--write_reference {{bad}}/a_dir {RUN}",
     "--write_reference='{bad}/a_dir' is a directory"),
    ("compare.py", "missing_dir_write",
     f"--write_reference {{bad}}/nowhere/ref.json {RUN}",
     "--write_reference='{bad}/nowhere/ref.json' cannot be written: its "
     "directory {bad}/nowhere does not exist"),
    # bench.py has no file or directory argument: its bad values.
    ("bench.py", "bad_value", "--hidden 64,x",
     "--hidden='64,x' is not accepted: comma-separated positive integers"),
    ("bench.py", "bad_value_profile", "--profile -1",
     "--profile=-1 is not accepted"),
    # soak.py: its directory, and the runs already in it.
    ("soak.py", "file_for_dir", "--workdir {bad}/a_file",
     "--workdir='{bad}/a_file' is a file, not a directory"),
    *[("soak.py", f"{kind}_config.json", "--workdir {bad}/soak_" + kind,
       "{bad}/soak_" + kind + "/soaked/config.json " + fragment)
      for kind, (_, fragment) in CONFIG_JSON_DAMAGE.items()],
]


def _fill(text: str, bad: Path, trained: Path) -> str:
  return text.format(bad=bad, trained=trained, quickstart=QUICKSTART,
                     beta_sweep=BETA_SWEEP)


def test_the_matrix_covers_every_script_and_every_class():
  assert {s for s, *_ in CASES} == set(SCRIPTS)
  classes = {c for s, c, *_ in CASES if s != "bench.py"}
  for kind in ("missing", "empty", "truncated", "wrong_type", "wrong_keys",
               "dir_for_file", "file_for_dir"):
    assert any(c.startswith(kind) for c in classes), kind


@pytest.mark.parametrize("script,kind,args,message", CASES,
                         ids=[f"{s}-{c}" for s, c, *_ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    bad, trained, script, kind, args, message):
  del kind
  before = tree_digest(bad, trained)
  result = run_script(script, *_fill(args, bad, trained).split())
  assert result.status == cli.EXIT_USER_ERROR, result
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  at = 0
  for part in _fill(message, bad, trained).split(PARTS):
    assert part in lines[0][at:], (part, lines[0])
    at = lines[0].index(part, at) + len(part)
  assert "Traceback" not in result.stderr
  assert tree_digest(bad, trained) == before


# ----------------------------------------------------------------------------
# A closed standard output (``| head``).
# ----------------------------------------------------------------------------


def _closed_pipe():
  """The write end of a pipe whose read end is closed (as after ``head``
  exits): every write to it fails with EPIPE."""
  read, write = os.pipe()
  os.close(read)
  return write


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_into_a_closed_pipe_exits_0_quietly(script):
  with open(_closed_pipe(), "w") as stdout:
    result = run_script(script, "--help", stdout=stdout)
  assert (result.status, result.stderr) == (0, "")


def test_output_into_a_closed_pipe_exits_141_quietly(trained):
  with open(_closed_pipe(), "w") as stdout:
    result = run_script("compare.py", trained / "seed0", trained / "seed0",
                        stdout=stdout)
  assert (result.status, result.stderr) == (cli.EXIT_PIPE_CLOSED, "")
  assert cli.EXIT_PIPE_CLOSED == 141


def test_a_user_error_keeps_its_status_when_stdout_is_closed(bad):
  with open(_closed_pipe(), "w") as stdout:
    result = run_script("compare.py", "--reference", bad / "list.json",
                        bad / "a_dir", stdout=stdout)
  assert result.status == 2 and "holds a JSON list" in result.stderr


@pytest.fixture(scope="module")
def help_into_closed_pipes():
  """``python scripts/X.py --help`` of every script as a real process, its
  stdout a closed pipe; all at once (each pays for importing JAX)."""
  procs = {}
  for script in SCRIPTS:
    write = _closed_pipe()
    procs[script] = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / script), "--help"], env=ENV,
        stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
  return {s: (p.wait(timeout=300), p.stderr.read()) for s, p in procs.items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_into_a_closed_pipe_as_a_process(help_into_closed_pipes, script):
  status, stderr = help_into_closed_pipes[script]
  assert (status, stderr) == (0, "")


def test_help_piped_into_head_as_a_user_types_it():
  out = subprocess.run(
      ["bash", "-c", f"{sys.executable} {REPO / 'scripts' / 'train.py'} "
       "--help | head -1; echo \"status ${PIPESTATUS[0]}\""],
      env=ENV, capture_output=True, text=True)
  assert out.stdout.splitlines() == ["Train (or resume) one VAE run.",
                                     "status 0"], out
  assert out.stderr == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_config_fields_only_for_scripts_with_config(script):
  result = run_script(script, "--help")
  assert result.status == 0 and result.stderr == ""
  own_flag = {"compare.py": "--reference", "bench.py": "--hidden",
              "soak.py": "--interruptions"}.get(script, "--workdir")
  assert f"  {own_flag}: " in result.stdout  # its flags are listed
  has_config = script in ("train.py", "sweep.py")
  assert ("Config fields" in result.stdout) == has_config
  assert ("--config.beta  (default: 1.0)" in result.stdout) == has_config


# ----------------------------------------------------------------------------
# Issue 29's refusals: one line, status 2, nothing created.
# ----------------------------------------------------------------------------


def test_compare_with_one_argument_is_a_one_line_usage_error(trained):
  result = run_script("compare.py", trained / "seed0")
  assert result.status == 2
  assert result.stderr.splitlines() == [
      f"error: two run directories expected, 1 given: "
      f"'{trained / 'seed0'}'; usage: compare.py RUN_A RUN_B, compare.py "
      "--reference FILE RUN or compare.py --write_reference FILE RUN"]


def test_evaluate_refuses_a_k_that_int32_cannot_count(trained):
  before = tree_digest(trained)
  result = run_script("evaluate.py", "--workdir", trained / "seed0",
                      "--k=3000000000")
  assert result.status == 2 and "Traceback" not in result.stderr
  assert result.stderr.splitlines() == [
      "error: bad command-line flag: flag --k=3000000000: --k must be an "
      "integer in [1, 2147483647] (importance samples per example)"]
  assert tree_digest(trained) == before


GIB = 2**30


@pytest.fixture
def one_gib_available(monkeypatch):
  """The host has 1 GiB of memory available (whatever this machine has)."""
  monkeypatch.setattr(inputs, "available_memory_bytes", lambda: GIB)


def test_training_memory_estimate_is_the_decoder_rows_times_nine():
  config = _tiny(num_samples=100)
  assert config_lib.training_memory_bytes([config]) == 200 * 100 * 784 * 4 * 9
  assert config_lib.training_memory_bytes([config] * 3) == (
      3 * 200 * 100 * 784 * 4 * 9)
  # A group that fits alone but not with its members.
  alone = 200 * 100 * 784 * 4 * 9
  config_lib.check_training_memory([config], available=alone)
  with pytest.raises(config_lib.ConfigError, match=r"for 2 members .* needs "
                     r"about 1\.1 GiB, more than the 0\.5 GiB"):
    config_lib.check_training_memory([config] * 2, available=alone)


def test_num_samples_that_cannot_fit_are_refused_before_anything(
    tmp_path, one_gib_available):
  del one_gib_available
  result = run_script("train.py", "--config", QUICKSTART,
                      "--config.num_samples=100000", "--workdir",
                      tmp_path / "run")
  assert result.status == 2
  assert result.stderr.splitlines() == [
      "error: config.num_samples=100000 with config.batch_size=128: one "
      "training step (batch_size x num_samples x 784 values x 4 bytes x 9: "
      "the decoder's rows, their gradients and temporaries) needs about "
      "336.5 GiB, more than the 1.0 GiB of memory available; lower "
      "num_samples or batch_size"]
  assert list(tmp_path.iterdir()) == []
  # A sweep too, before its directory is created.
  result = run_script("sweep.py", "--config", BETA_SWEEP,
                      "--config.num_samples=100000", "--workdir",
                      tmp_path / "sweep")
  assert result.status == 2 and "for 8 members" in result.stderr
  assert list(tmp_path.iterdir()) == []


def test_an_evaluation_that_cannot_fit_is_refused_before_compiling(
    trained, one_gib_available):
  del one_gib_available
  before = tree_digest(trained)
  result = run_script("evaluate.py", "--workdir", trained / "seed0",
                      "--k=100000", "--batch_size=1000",
                      "--chunk_size=100000")
  assert result.status == 2
  assert result.stderr.splitlines() == [
      "error: the k-sample bound with batch_size=1000 and 100000 draws per "
      "step (chunk_size=100000; batch_size x draws x 784 values x 4 bytes x "
      "2) needs about 584.1 GiB, more than the 1.0 GiB of memory available; "
      "lower batch_size or chunk_size"]
  assert tree_digest(trained) == before


def test_launch_with_slurm_where_there_is_none_writes_nothing(
    tmp_path, monkeypatch):
  from vae.sweep import launch  # the module the script calls
  monkeypatch.setattr(launch.shutil, "which", lambda name: None)
  result = run_script("sweep.py", "--config", BETA_SWEEP, "--workdir",
                      tmp_path / "sweep", "--launch", "2", "--executor",
                      "slurm")
  assert result.status == 2 and "Traceback" not in result.stderr
  assert result.stderr.splitlines() == [
      "error: executor='slurm' is not accepted here: SLURM's srun is not on "
      "PATH (not a SLURM login node?); use the local executor, or launch "
      "from a machine of the cluster"]
  assert list(tmp_path.iterdir()) == []


def test_a_negative_launch_count_is_refused_before_the_workdir_exists(
    tmp_path):
  result = run_script("sweep.py", "--config", BETA_SWEEP, "--workdir",
                      tmp_path / "sweep", "--launch=-1")
  assert result.status == 2
  assert result.stderr.splitlines() == [
      "error: bad command-line flag: flag --launch=-1: -1 is not a "
      "non-negative integer"]
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("env,message", [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "2"},
     "SLURM_ARRAY_TASK_ID='5' with SLURM_ARRAY_TASK_COUNT='2' is not "
     "accepted: integers with 0 <= task id < task count"),
    ({"JOB_COMPLETION_INDEX": "x", "VAE_SHARD_COUNT": "2"},
     "JOB_COMPLETION_INDEX='x' with VAE_SHARD_COUNT='2' is not accepted"),
])
def test_a_bad_shard_from_the_scheduler_names_its_variables(
    tmp_path, monkeypatch, env, message):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  result = run_script("sweep.py", "--config", BETA_SWEEP, "--workdir",
                      tmp_path / "sweep")
  assert result.status == 2
  (line,) = result.stderr.splitlines()
  assert message in line and "--shard=" not in line
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,line", [
    (["--config.betta=1"], "error: bad command-line flag: 'betta' Did you "
     "mean \"beta\" instead of \"betta\"?"),
    (["--nosuchflag"], "error: bad command-line flag: Unknown command line "
     "flag 'nosuchflag'"),
    (["--config.beta=abc"], "error: bad command-line flag: flag "
     "--config.beta=abc: could not convert string to float: 'abc'"),
])
def test_flag_errors_keep_their_quotes(tmp_path, args, line):
  result = run_script("train.py", "--config", QUICKSTART, *args, "--workdir",
                      tmp_path / "run")
  assert result.status == 2 and result.stderr.splitlines() == [line]


def test_library_error_class_names_never_leak_into_messages(tmp_path):
  result = run_script("train.py", "--config",
                      f"{EXPERIMENTS / 'iwae_table1.py'}:bogus", "--workdir",
                      tmp_path / "run")
  assert result.status == 2
  (line,) = result.stderr.splitlines()
  assert "vae.errors" not in line and "ConfigError" not in line
  assert line.startswith(
      f"error: --config='{EXPERIMENTS / 'iwae_table1.py'}:bogus' could not "
      "be loaded: config variant 'bogus' is not accepted: one of ('vae1',")


def test_evaluate_into_a_log_file_draws_no_progress_bar(trained, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(trained / "seed0", run)
  result = run_script("evaluate.py", "--workdir", run, "--k", "2")
  assert result.status == 0, result.stderr
  assert "\r" not in result.stderr and "\r" not in result.stdout
  assert (run / runs.EVAL_FILE).is_file()


def test_the_iwae_table1_sweep_table_shows_what_varies(tmp_path):
  spec = importlib.util.spec_from_file_location(
      "iwae_table1", EXPERIMENTS / "iwae_table1.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  rows = report.sweep_rows(tmp_path, module.get_config("short"))
  header = report.sweep_table(rows).splitlines()[0].split()
  assert header == ["member", "num_samples", "objective", "test_elbo",
                    "test_recon", "test_kl", "seconds", "status"]
  assert report.varying_fields([rows[0]]) == []


# ----------------------------------------------------------------------------
# compare.py's exit status: 0 bitwise equal, 1 different, 2 bad input.
# ----------------------------------------------------------------------------


def test_compare_exits_0_only_when_bitwise_equal_and_1_when_different(
    trained, tmp_path):
  a, b = trained / "seed0", trained / "seed1"
  same = run_script("compare.py", a, a)
  assert same.status == 0 and json.loads(same.stdout)["bitwise_equal"]
  other = run_script("compare.py", a, b)
  assert other.status == cli.EXIT_DIFFERS == 1
  assert not json.loads(other.stdout)["bitwise_params"]
  # Equal parameters but another recorded test ELBO: not bitwise equal.
  c = tmp_path / "c"
  shutil.copytree(a, c)
  records = runs.read_metrics(c)
  records[-1]["test_elbo"] += 1e-6
  (c / runs.METRICS_FILE).write_text(
      "".join(json.dumps(r) + "\n" for r in records))
  result = run_script("compare.py", a, c)
  assert result.status == 1
  assert json.loads(result.stdout)["bitwise_params"]
  # Against a reference file: written, equal, then one digit changed.
  ref = tmp_path / "ref.json"
  assert run_script("compare.py", "--write_reference", ref, a).status == 0
  assert run_script("compare.py", "--reference", ref, a).status == 0
  changed = json.loads(ref.read_text())
  changed["param_sha256"] = "0" * 64
  ref.write_text(json.dumps(changed))
  result = run_script("compare.py", "--reference", ref, a)
  assert result.status == 1
  assert json.loads(result.stdout)["verdict"].startswith("differs")
  assert run_script("compare.py", "--reference", tmp_path / "no.json",
                    a).status == 2


# ----------------------------------------------------------------------------
# The validation functions themselves (vae/inputs.py).
# ----------------------------------------------------------------------------


def test_read_json_object_names_the_file_and_what_was_expected(bad):
  expected = "a thing: a JSON object with 'n'"
  keys = {"n": int}
  cases = {
      bad / "missing.json": "does not exist",
      bad / "empty.json": "is empty",
      bad / "truncated.json": "is not complete JSON (truncated or damaged: ",
      bad / "list.json": "holds a JSON list, not an object",
      bad / "keyless.json": "lacks the key 'n'",
      bad / "a_dir": "is a directory",
  }
  for path, problem in cases.items():
    with pytest.raises(runs.RunError) as e:
      inputs.read_json_object(path, expected, keys)
    assert str(e.value).startswith(f"{path} {problem}")
    assert str(e.value).endswith(f"; expected {expected}")
  (bad / "typed.json").write_text('{"n": true}')
  with pytest.raises(runs.RunError, match=r"has 'n' = true \(a JSON boolean\)"):
    inputs.read_json_object(bad / "typed.json", expected, keys)
  (bad / "typed.json").write_text('{"n": 3, "other": []}')
  assert inputs.read_json_object(bad / "typed.json", expected, keys) == {
      "n": 3, "other": []}
  with pytest.raises(runs.RunError, match="a_file is a file, not a directory"):
    inputs.existing_dir(bad / "a_file", "a directory")
  with pytest.raises(runs.RunError, match="a_file is a file, not a directory"):
    inputs.dir_or_absent(bad / "a_file", "a directory")
  assert inputs.dir_or_absent(bad / "new", "a directory") == bad / "new"


def test_a_damaged_sweep_reference_names_the_member(bad):
  path = bad / "sweep_ref.json"
  path.write_text(json.dumps({"members": {"m0": {"epoch": 1}}}))
  with pytest.raises(runs.RunError, match=r"sweep_ref.json \(member 'm0'\) "
                     "lacks the keys 'param_sha256', 'metrics', 'provenance'"):
    restore.read_reference(path)
