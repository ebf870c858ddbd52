"""Sharded training with a pruned model, two CPU processes (torchrun, gloo): FSDP2 and DeepSpeed
ZeRO-2 / ZeRO-3. Pruned + the gathered (full-vocabulary) state dict equals unpruned training under
the same set-up; ZeRO-3's partitions are refused by name, never read as rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed
SCRIPT = Path(__file__).with_name("sharded_train.py")


def _launch(modes: str, out: Path) -> dict[str, dict]:
    """Run tests/sharded_train.py MODES under torchrun; {mode: its report}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(SCRIPT), modes, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {m: json.loads((out / m / "report.json").read_text()) for m in modes.split(",")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """ZeRO-2 and ZeRO-3 in one launch (one DeepSpeed start-up for both)."""
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp("zero")
    return out, _launch("zero2,zero3", out)


def _max_diff(out: Path) -> float:
    full, pruned = load_file(out / "full.safetensors"), load_file(out / "pruned.safetensors")
    assert full.keys() == pruned.keys()
    return max((full[k] - pruned[k]).abs().max().item() for k in full)


def test_fsdp2(tmp_path):
    from transformers import BertForSequenceClassification

    report = _launch("fsdp2", tmp_path)["fsdp2"]
    out = tmp_path / "fsdp2"
    assert report["world_size"] == 2 and report["pruned_embedding_rows"] == 300
    assert _max_diff(out) <= 1e-5
    stock = BertForSequenceClassification.from_pretrained(out / "pruned")
    want = load_file(out / "full.safetensors")
    got = stock.state_dict()
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-5


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero(zero_runs, stage):
    root, reports = zero_runs
    report = reports[f"zero{stage}"]
    assert report["world_size"] == 2 and report["pruned_embedding_rows"] == 300
    assert _max_diff(root / f"zero{stage}") <= 1e-5
    if stage == 3:  # the partitioned embedding: refused until gathered, not read as rows
        assert "partitioned by DeepSpeed ZeRO-3" in report["refusals"]["state_dict"]
        assert "sharded" in report["refusals"]["restore"]


def test_restore_refuses_a_sharded_model():
    import torch.distributed as dist

    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already running")
    torch.manual_seed(0)
    # A DTensor-looking parameter is all restore needs to refuse (no process group required).
    import numpy as np

    import vocabprune as vp

    emb = torch.nn.Embedding(10, 2)
    model = torch.nn.Module()
    model.emb = emb
    model.get_input_embeddings = lambda: emb
    kept = vp.KeptVocab.from_counts(np.ones(10, dtype=np.int64)[:5], vocab_size=10)
    vp.prune(model, kept)
    emb.weight.ds_id, emb.weight.ds_status = 1, type("S", (), {"name": "NOT_AVAILABLE"})()
    with pytest.raises(vp.VocabPruneError, match="sharded"):
        vp.restore(model)
    assert vp.is_pruned(model)
