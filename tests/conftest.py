"""Shared pytest set-up: the numerics mode of the process (before any test
starts JAX), and the fault-injection count (issue: "count them and print the
count in the test output")."""

from vae import numerics

numerics.configure("default")


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "fault: a fault-injection case (signals, kills, corruption, "
      "NaNs, races, unwritable paths, bad input)")
  config.addinivalue_line(
      "markers", "slow: a long check (minutes); .ci/run runs these too")


def pytest_terminal_summary(terminalreporter):
  counts = {"passed": 0, "failed": 0, "skipped": 0}
  for outcome in counts:
    for report in terminalreporter.stats.get(outcome, []):
      if report.when in ("call", "setup") and "fault" in report.keywords:
        counts[outcome] += 1
  total = sum(counts.values())
  if total:
    terminalreporter.write_line(
        f"fault-injection cases: {total} run, {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['skipped']} skipped")
