"""Portable numerics (``config.numerics="portable"``): the same bits on
processors with other instruction sets and caches, emulated by qemu-user.

qemu-user translates x86-64 code and answers CPUID as the processor model
it is given, so XLA's code generation and every library's run-time dispatch
see that processor (its instruction sets and reported caches). The probe
(tests/portable_probe.py) hashes short portable training runs, evaluations
and a vmapped group; every digest must agree natively and on each emulated
processor. CI installs qemu-user (.ci/run) and sets CI=true, where a missing
qemu is a failure, not a skip.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "portable_probe.py"
# An AMD and an Intel processor with AVX2 + FMA and no AVX-512, reporting
# other cache sizes (the two whose library products differ from each other).
EMULATED = ("EPYC-Rome", "Haswell")


def _probe(prefix=()) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "NPROC")}
  out = subprocess.run([*prefix, sys.executable, str(PROBE)], env={
      **env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=1800)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout)


def _qemu() -> str:
  if platform.machine() != "x86_64":
    pytest.skip("emulates x86-64 processors: needs an x86-64 host")
  qemu = shutil.which("qemu-x86_64")
  if qemu is None:
    if os.environ.get("CI") == "true":
      pytest.fail("qemu-x86_64 is missing: CI must install qemu-user "
                  "(.ci/run does); this check may not be skipped in CI")
    pytest.skip("needs qemu-x86_64 (Debian: apt-get install qemu-user)")
  return qemu


@pytest.mark.slow
def test_portable_runs_give_the_same_bits_on_emulated_processors():
  qemu = _qemu()
  native = _probe()
  emulated = {cpu: _probe((qemu, "-cpu", cpu)) for cpu in EMULATED}
  portable = sorted(k for k in native if not k.startswith("control/"))
  # Every digest the probe writes (a guard against a probe that silently
  # hashes less): four training cases x four trees, the k = 120 bound, and
  # a member's parameters in a group and alone.
  cases = ("relu_b32", "tanh2_dynamic_b20", "vae_k2", "iwae_k3_dreg")
  assert portable == sorted(
      [f"{c}/{t}" for c in cases
       for t in ("params", "adam_state", "train_terms", "test_elbo_terms")]
      + ["iwae_bound_k120", "group_alone/seed1_beta2_params",
         "group_pair/seed1_beta2_params"])
  for cpu, digests in emulated.items():
    differing = [k for k in portable if digests[k] != native[k]]
    assert not differing, f"{cpu}: {differing}"
  # The emulation reaches other code: the library products portable mode
  # avoids give other bits on at least one of the processors.
  controls = [k for k in native if k.startswith("control/")]
  assert any(len({native[k], *(d[k] for d in emulated.values())}) > 1
             for k in controls), "no control differs: is qemu emulating?"
  # A vmapped group's member is its standalone run, here as everywhere.
  assert (native["group_pair/seed1_beta2_params"]
          == native["group_alone/seed1_beta2_params"])
