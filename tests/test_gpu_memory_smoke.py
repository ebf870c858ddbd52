"""benchmarks/gpu_memory.py runs end to end on a CPU with tiny shapes and writes a complete JSON.

Only the harness is checked (every method of every shape measured, memory numbers positive, step
times finite, the pruned model holding fewer bytes than the full one where the vocabulary is
most of the parameters); no timing is asserted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_memory.py"
METHODS = ("full", "pruned", "oracle")
# An encoder and a large-vocabulary causal LM (scaled embeddings, its own vocab_size copy): the
# harness's two paths; the other tiny shapes differ only in numbers.
TINY_SHAPES = ("e5-tiny", "gemma3-tiny")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu_memory") / "gpu_memory.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)]
        + ["--shapes", ",".join(TINY_SHAPES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| shape |" in proc.stdout  # the table is printed
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_method_of_every_shape_is_measured(result: dict) -> None:
    assert result["device"] == "cpu" and result["tiny"] is True
    assert result["peak_field"] == "state_bytes_total"
    runs = result["runs"]
    for shape in TINY_SHAPES:
        for method in METHODS:
            mine = [r for r in runs if r["shape"] == shape and r["method"] == method]
            assert mine, (shape, method)
            for run in mine:
                assert "error" not in run, run.get("error")
                assert run["state_bytes_total"] > 0
                assert run["cpu_peak_rss_bytes"] > 0
                assert run["cpu_peak_rss_growth_bytes"] >= 0
                assert run["step_seconds"] and all(math.isfinite(t) for t in run["step_seconds"])
                assert math.isfinite(run["median_step_seconds"])
                assert all(math.isfinite(x) for x in run["losses"])
                assert "cuda_max_memory_allocated_bytes" not in run  # no CUDA field on a CPU


@pytest.mark.slow
def test_pruned_holds_fewer_bytes_than_full_and_as_many_as_the_oracle(result: dict) -> None:
    rows = result["summary"]
    assert {r["shape"] for r in rows} == set(TINY_SHAPES)
    for row in rows:
        peak = row["peak_bytes"]
        # Tiny shapes: the embedding is most of the parameters and ~90% of its rows go.
        assert row["embedding_params_removed"] > 0.5
        assert 0 < peak["pruned"] < peak["full"], row
        # The pruned model holds the oracle's tensors: the same rows, the same shapes.
        assert peak["pruned"] == pytest.approx(peak["oracle"], rel=0.01), row
        assert row["pruned_over_full"] < 1


@pytest.mark.slow
def test_a_frozen_head_holds_the_dropped_rows_once_without_training_state(result: dict) -> None:
    """output='frozen' (causal LM shapes only): the dropped rows' weights, but no gradient or
    AdamW state for them: more than the restricted head holds, less than full fine-tuning."""
    for row in result["summary"]:
        peak = row["peak_bytes"]
        if row["shape"] == "gemma3-tiny":
            assert "frozen" not in row["errors"], row["errors"]
            assert peak["pruned"] < peak["frozen"] < peak["full"], row
            assert row["frozen_over_full"] < 1
        else:  # an encoder has no LM head to freeze
            assert peak["frozen"] is None
