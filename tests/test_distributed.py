"""Distributed: `vocabprune finetune` (cli.main) under torchrun, 2 CPU processes (gloo): every
rank prunes to one kept vocabulary; pruned + restore equals unpruned under the same set-up."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import vocabprune as vp

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
WORD_KEY = "bert.embeddings.word_embeddings.weight"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, bbc_texts):
    if TORCHRUN is None:
        pytest.skip("torchrun is not installed in this environment")
    root = tmp_path_factory.mktemp("ddp")
    # A 64-example BBC News subset as JSONL (keeps the two-process runs short).
    texts, labels = bbc_texts["text"], bbc_texts["label"]
    rows = np.random.default_rng(0).permutation(len(texts))[:64]
    data = root / "bbc64.jsonl"
    data.write_text(
        "".join(json.dumps({"text": texts[i], "label": labels[i]}) + "\n" for i in rows)
    )
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd += [str(Path(__file__).with_name("ddp_finetune_twice.py")), str(root)]
    cmd += ["--data", str(data), "--max-steps", "3", "--max-length", "32", "--batch-size", "4"]
    cmd += ["--weight-decay", "0.1", "--lr", "1e-3", "--eval-fraction", "0", "--seed", "11"]
    cmd += ["--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 prints its report: two JSON objects, the pruned run's then the full run's.
    decoder = json.JSONDecoder()
    text, reports = proc.stdout.strip(), {}
    for name in ("pruned", "full", "different_data"):
        obj, end = decoder.raw_decode(text)
        reports[name] = obj[name] if name == "different_data" else obj
        text = text[end:].strip()
    assert text == ""
    return root, reports


def test_ddp_pruned_equals_unpruned(ddp_runs):
    root, reports = ddp_runs
    pruned, full = reports["pruned"], reports["full"]
    assert pruned["world_size"] == full["world_size"] == 2
    assert pruned["pruned"] and not full["pruned"] and pruned["steps"] == 3
    a = load_file(root / "pruned" / "model.safetensors")
    b = load_file(root / "full" / "model.safetensors")
    assert a.keys() == b.keys() and a[WORD_KEY].shape == (30522, 384)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert pruned["dropped_decay_factor"][WORD_KEY] < 1.0


def test_every_rank_reports_the_same_kept_vocabulary(ddp_runs):
    root, reports = ddp_runs
    digests = reports["pruned"]["rank_kept_digests"]
    kept = vp.KeptVocab.load(root / "pruned")
    assert len(digests) == 2 and set(digests) == {kept.digest}
    assert reports["pruned"]["kept_tokens"] == kept.size < 30522
    # The full model was written once, by rank 0: one folder, no leftovers beside it.
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_ranks_with_different_data_agree_or_fail_loudly(ddp_runs):
    _, reports = ddp_runs
    r0, r1 = reports["different_data"]
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["summed"] == r1["summed"] == [0, 3, 6, 0, 0, 0, 0, 2, 0, 0]
    assert r0["maxed"] == r1["maxed"] == [0, 3, 5, 0, 0, 0, 0, 2, 0, 0]
    assert r0["kept"] == r1["kept"] == [1, 2, 7]
    assert r0["digests"] == r1["digests"] and len(set(r0["digests"])) == 1
    for r in (r0, r1):  # each rank building its own vocabulary fails on every rank
        assert r["error"] is not None and "different kept vocabularies" in r["error"]
