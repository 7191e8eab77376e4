"""Write tests/durations.json (seconds per test file) from a pytest JUnit XML report.

    bash scripts/test.sh --junitxml=/tmp/junit.xml
    python scripts/test_durations.py /tmp/junit.xml

tests/conftest.py orders the files longest first from it, so the two xdist workers of
scripts/test.sh finish close together. A test's time in the report includes its fixtures'
set-up and tear-down, so a module fixture's cost lands on its file.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "durations.json"


def per_file(report: str | Path) -> dict[str, float]:
    """Seconds per test file (``tests/test_x.py``) summed over the report's test cases."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname", "").split(".")
        # classname is "tests.test_x" or "tests.test_x.TestClass": the file is the test_ part.
        parts = [p for p in module if p]
        names = [i for i, p in enumerate(parts) if p.startswith("test_")]
        if not names:
            continue
        path = "/".join(parts[: names[0] + 1]) + ".py"
        totals[path] += float(case.get("time") or 0.0)
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/test_durations.py JUNIT.xml", file=sys.stderr)
        return 2
    table = per_file(argv[0])
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{OUT}: {len(table)} files, {sum(table.values()):.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
