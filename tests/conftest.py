"""Shared pytest set-up: the fault-injection count (issue: "count them and
print the count in the test output")."""



def pytest_configure(config):
  config.addinivalue_line(
      "markers", "fault: a fault-injection case (signals, kills, corruption, "
      "NaNs, races, unwritable paths, bad input)")


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
