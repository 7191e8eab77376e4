"""The suite's own scheduling: per-file durations from a JUnit report, longest file first."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import test_durations  # noqa: E402


def test_per_file_sums_each_files_cases_including_classes(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text("""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_one" time="1.25"/>
<testcase classname="tests.test_a" name="test_two" time="2.5"/>
<testcase classname="tests.test_b.TestThing" name="test_x" time="10.0"/>
<testcase classname="tests.test_b" name="test_y" time="0.5"/>
<testcase classname="" name="collect_error" time="3"/>
</testsuite></testsuites>""")
    table = test_durations.per_file(report)
    assert table == {"tests/test_b.py": 10.5, "tests/test_a.py": 3.8}
    assert list(table) == ["tests/test_b.py", "tests/test_a.py"]  # longest first


def test_collection_puts_the_longest_file_first_and_keeps_each_files_order(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text("def test_a1(): pass\ndef test_a2(): pass\n")
    (tests / "test_b.py").write_text("def test_b1(): pass\ndef test_b2(): pass\n")
    (tests / "test_c.py").write_text("def test_c1(): pass\n")
    (tests / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tests / "durations.json").write_text(json.dumps({"tests/test_b.py": 50.0,
                                                      "tests/test_a.py": 1.0}))
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:cacheprovider", "tests"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    # b (50 s) first; c is unmeasured and counts as the median file (50 s of {1, 50}),
    # after b by the stable sort; a (1 s) last; inside a file the order is kept.
    assert ids == ["tests/test_b.py::test_b1", "tests/test_b.py::test_b2",
                   "tests/test_c.py::test_c1", "tests/test_a.py::test_a1",
                   "tests/test_a.py::test_a2"], out.stdout + out.stderr
