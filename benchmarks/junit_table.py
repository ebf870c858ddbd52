"""One line per test from a pytest JUnit XML file: outcome, seconds, node id (tab-separated),
then a count per outcome. Used by gpu_run.sh so a device run's pass/fail reads at a glance.

    python benchmarks/junit_table.py RESULTS/tests.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def outcomes(path: Path) -> list[tuple[str, float, str]]:
    """(outcome, seconds, node id) of every test case in the file."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = next(
            (k for k in ("failure", "error", "skipped") if k in kinds), "passed"
        ).replace("failure", "failed")
        node = f"{case.get('classname', '')}::{case.get('name', '')}"
        rows.append((outcome, float(case.get("time", 0) or 0), node))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows = outcomes(Path(argv[0]))
    for outcome, seconds, node in rows:
        print(f"{outcome}\t{seconds:.2f}\t{node}")
    counts = Counter(outcome for outcome, _, _ in rows)
    print("# " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
