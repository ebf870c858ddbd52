"""Counting shards anywhere and merging the counts: a Dask LocalCluster (2 worker processes)
counts BBC News in shards with vp.count_shard, and the merged counts equal the one-process scan;
count files from `analyze --save-counts` merge with `vocabprune merge-counts` and feed --kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vocabprune as vp
from vocabprune.cli.main import main


@pytest.fixture(scope="module")
def texts(bbc_texts):
    return list(bbc_texts["text"][:400])


def test_dask_shards_merge_to_the_single_process_counts(minilm_dir, minilm_tokenizer, texts):
    distributed = pytest.importorskip("dask.distributed")
    want = vp.count_texts(minilm_tokenizer, texts, max_length=128, progress=False)
    shards = [texts[i::4] for i in range(4)]
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        futures = client.map(vp.count_shard, shards, tokenizer=str(minilm_dir), max_length=128)
        parts = client.gather(futures)
    assert len({p.tokenizer_fingerprint for p in parts}) == 1
    merged = vp.merge_counts(parts)
    assert np.array_equal(merged.counts, want)
    assert merged.meta == {"shards": 4, "examples": len(texts)}
    kept = vp.build_kept_vocab(minilm_tokenizer, counts=merged)
    assert kept == vp.build_kept_vocab(minilm_tokenizer, texts, max_length=128)


def test_count_files_merge_on_the_command_line_and_feed_kept(capsys, tmp_path, texts):
    shards = []
    for i in range(2):
        data = tmp_path / f"shard{i}.txt"
        data.write_text("\n".join(t.replace("\n", " ") for t in texts[i::2][:40]))
        suffix = ".safetensors" if i == 0 else ".npy"
        counts = tmp_path / f"counts{i}{suffix}"
        argv = ["analyze", "--data", str(data), "--max-length", "64", "--save-counts", str(counts)]
        assert main([*argv, "--json"]) == 0
        capsys.readouterr()
        shards.append((data, counts))
    merged = tmp_path / "merged.safetensors"
    argv = ["merge-counts", *(str(c) for _, c in shards), "--out", str(merged), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == 2
    both = ["analyze", "--data", *(str(d) for d, _ in shards), "--max-length", "64", "--json"]
    assert main(both) == 0
    whole = json.loads(capsys.readouterr().out)
    assert report["total_tokens"] == whole["total_tokens"]
    assert report["ids_used"] == whole["ids_in_data"]
    # The merged counts choose the vocabulary of an export of one shard: it keeps both shards' ids.
    out = tmp_path / "compact"
    argv = ["prune", "--data", str(shards[0][0]), "--max-length", "64", "--kept", str(merged)]
    assert main([*argv, "--out", str(out), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["kept_tokens"] == whole["kept_ids"]


def test_counts_of_another_tokenizer_or_vocabulary_are_refused(capsys, tmp_path, minilm_tokenizer):
    a = vp.Counts(np.ones(30522, dtype=np.int64), "fingerprint-a")
    b = vp.Counts(np.ones(30522, dtype=np.int64), "fingerprint-b")
    vp.save_counts(tmp_path / "a.npy", a)
    vp.save_counts(tmp_path / "b.safetensors", b)
    vp.save_counts(tmp_path / "c.npy", vp.Counts(np.ones(10, dtype=np.int64), "fingerprint-a"))
    argv = ["merge-counts", str(tmp_path / "a.npy"), str(tmp_path / "b.safetensors")]
    assert main([*argv, "--out", str(tmp_path / "m.npy")]) == 2
    assert "another tokenizer" in capsys.readouterr().err
    argv = ["merge-counts", str(tmp_path / "a.npy"), str(tmp_path / "c.npy")]
    assert main([*argv, "--out", str(tmp_path / "m.npy")]) == 2
    assert "not the same vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "m.npy").exists()
    with pytest.raises(vp.MismatchError, match="another tokenizer"):
        vp.build_kept_vocab(minilm_tokenizer, counts=a)
    assert vp.load_counts(tmp_path / "b.safetensors").tokenizer_fingerprint == "fingerprint-b"
