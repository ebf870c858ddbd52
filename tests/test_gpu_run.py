"""benchmarks/gpu_run.sh, the prepared GPU run: its options, and the per-test table it writes.

The whole script runs on a CPU with `--device cpu --tiny` in about two minutes (the device tests
and the tiny benchmark shapes); that dry run is kept out of `make test`, which already runs both
parts (tests/test_device.py, tests/test_gpu_memory_smoke.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
TABLE = ROOT / "benchmarks" / "junit_table.py"


@pytest.mark.parametrize(
    "args",
    [[], ["/tmp/x", "--device", "tpu"], ["/tmp/x", "--bogus"]],
    ids=["no-results-dir", "bad-device", "unknown-option"],
)
def test_bad_arguments_exit_2(args, tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip()


def test_a_python_without_torch_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "results"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert "cannot import torch" in proc.stderr
    assert not (out / "tests.xml").exists()


def test_junit_table_lists_every_outcome(tmp_path):
    (tmp_path / "test_mixed.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert False\n"
        "@pytest.mark.skip(reason='no')\n"
        "def test_skipped(): pass\n"
    )
    xml = tmp_path / "out.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
        + [str(tmp_path / "test_mixed.py")],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    proc = subprocess.run(
        [sys.executable, str(TABLE), str(xml)], capture_output=True, text=True, check=True
    )
    lines = proc.stdout.strip().splitlines()
    rows = {line.split("\t")[2].rsplit("::", 1)[1]: line.split("\t")[0] for line in lines[:-1]}
    assert rows == {"test_ok": "passed", "test_bad": "failed", "test_skipped": "skipped"}
    assert lines[-1] == "# 1 failed, 1 passed, 1 skipped"
