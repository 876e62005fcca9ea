"""The dependency lock: requirements.lock pins, with hashes, every package
pyproject.toml asks for, at versions its ranges accept (a test that fails
when the two drift apart: re-run `make lock`)."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def locked() -> dict[str, tuple[str, list[str]]]:
  """name -> (version, hashes) of every pin in requirements.lock."""
  text = (REPO / "requirements.lock").read_text()
  pins = {}
  for block in re.split(r"\n(?=[A-Za-z0-9])", text):
    match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==([^\s\\;]+)", block)
    if match:
      name = canonicalize_name(match.group(1).split("[")[0])
      pins[name] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})",
                                               block))
  return pins


def wanted() -> list[Requirement]:
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  return [Requirement(r) for r in
          project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_requirement_is_pinned_within_its_range():
  pins = locked()
  for requirement in wanted():
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{name} is in pyproject.toml but not in the lock"
    version, _ = pins[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"{name}=={version} in requirements.lock is outside pyproject.toml's "
        f"{requirement.specifier}: run `make lock`")


def test_every_pin_is_exact_and_hashed():
  pins = locked()
  assert len(pins) > 50  # the whole environment, not just the direct deps
  for name, (version, hashes) in pins.items():
    assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (name, version)
    assert hashes, f"{name}=={version} has no --hash"


def test_make_installs_from_the_lock():
  makefile = (REPO / "Makefile").read_text()
  assert "--require-hashes -r requirements.lock" in makefile
  assert "--no-deps -e ." in makefile
