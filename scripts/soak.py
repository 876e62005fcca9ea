"""Soak test: interrupt a training run many times, resume each time, and check
the final parameters are bitwise equal to an uninterrupted run's.

  python scripts/soak.py --interruptions 50 --workdir runs/soak --epochs 2000 --max_wait 15

(enough epochs that every signal lands while training: the report counts
``finished_before_signal``; the short defaults are for a quick look).

Each round starts ``scripts/train.py`` on the same workdir, waits a random
time (seeded), and sends SIGTERM (graceful: checkpoint, exit 75) or SIGKILL
(anything may be cut: an epoch, a checkpoint write, a metrics line). After
the interruptions the run is completed and compared with a reference run
trained without interruption. Not part of the test suite (it takes minutes).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from absl import flags

from vae import cli, inputs
from vae.store import restore, runs

_N = flags.DEFINE_integer("interruptions", 50, "How many interruptions.",
                          lower_bound=0)
_WORKDIR = flags.DEFINE_string("workdir", "runs/soak", "Where the two runs go "
                               "(soaked/ and reference/; created if missing).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the interruption schedule.")
_EPOCHS = flags.DEFINE_integer("epochs", 60, "Epochs of the soaked run.",
                               lower_bound=1)
_MAX_WAIT = flags.DEFINE_float("max_wait", 8.0, "Longest wait before a signal "
                               "(s; the shortest is 1 s).", lower_bound=1.0)

REPO = Path(__file__).resolve().parents[1]


def command(workdir: Path) -> list[str]:
  return [sys.executable, str(REPO / "scripts" / "train.py"), "--config",
          str(REPO / "experiments" / "quickstart.py"), "--config.hidden_sizes=(64,)",
          "--config.latent_dim=4", "--config.batch_size=100",
          f"--config.num_epochs={_EPOCHS.value}", "--noprogress", "--workdir",
          str(workdir)]


def main(argv):
  del argv
  rng = random.Random(_SEED.value)
  with cli.user_errors():  # bad paths: one line, before anything runs
    root = inputs.dir_or_absent(_WORKDIR.value, "a directory for the soaked "
                                "and reference runs (created if missing)",
                                flag="--workdir")
    soaked, reference = root / "soaked", root / "reference"
    for run_dir in (soaked, reference):
      inputs.dir_or_absent(run_dir, "a run directory (created if missing)")
      if (run_dir / runs.CONFIG_FILE).exists():
        runs.read_config_dict(run_dir)
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  counts = {"SIGTERM": 0, "SIGKILL": 0, "finished_before_signal": 0,
            "exit_statuses": {}}
  t0 = time.time()
  for i in range(_N.value):
    proc = subprocess.Popen(command(soaked), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(1.0, _MAX_WAIT.value))  # jax import and compile included
    sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
    if proc.poll() is None:
      proc.send_signal(sig)
      counts[sig.name] += 1
    else:
      counts["finished_before_signal"] += 1
    _, stderr = proc.communicate()
    statuses = counts["exit_statuses"]
    statuses[str(proc.returncode)] = statuses.get(str(proc.returncode), 0) + 1
    done = len(runs.read_metrics(soaked))
    print(f"[{i + 1}/{_N.value}] {sig.name} -> exit {proc.returncode}, "
          f"{done}/{_EPOCHS.value} epochs recorded", flush=True)
    # 75: stopped at an epoch boundary after a checkpoint; -9: killed; -15: a
    # SIGTERM that arrived during start-up, before training (and its signal
    # handler) began, so there was nothing to save.
    if proc.returncode not in (0, 75, -9, -15):
      print(stderr[-2000:], file=sys.stderr)
      sys.exit(1)
  subprocess.run(command(soaked), env=env, check=True, capture_output=True)
  subprocess.run(command(reference), env=env, check=True, capture_output=True)
  with cli.user_errors():
    result = restore.compare_runs(soaked, reference)
  strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rs]
  result["metrics_identical"] = strip(runs.read_metrics(soaked)) == strip(
      runs.read_metrics(reference))
  result.update(counts, interruptions=_N.value, seconds=time.time() - t0)
  print(json.dumps(result, indent=2))
  sys.exit(0 if result["bitwise_params"] and result["metrics_identical"] else 1)


if __name__ == "__main__":
  cli.run(main)
