"""`vocabprune prune`: compact and standalone exports, tokenizer rewrite, lossy vocabularies,
bad input and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vocabprune.cli.main import main
from vocabprune.cli.options import PruneOptions
from vocabprune.cli.prune import run_prune
from vocabprune.core.errors import MismatchError, VocabPruneError
from vocabprune.deploy.compact import load_compact
from vocabprune.deploy.tokenizer_rewrite import (
    merge_closure,
    required_ids,
    rewrite_tokenizer_json,
    tokenizer_json,
)

# Runs in a fresh interpreter that cannot import vocabprune: only transformers and torch.
STOCK_CHECK = textwrap.dedent(
    """
    import os, sys
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "vocabprune"))]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    import importlib.util
    assert importlib.util.find_spec("vocabprune") is None, "vocabprune is importable"
    import json, torch
    from transformers import AutoModel, AutoTokenizer
    folder, original, texts_file, max_length = sys.argv[1:5]
    max_length = int(max_length)
    texts = json.load(open(texts_file))
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    otok = AutoTokenizer.from_pretrained(original)
    omodel = AutoModel.from_pretrained(original).eval()
    worst, same_ids = 0.0, True
    with torch.no_grad():
        for i in range(0, len(texts), 16):
            kw = dict(truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            a, b = tok(texts[i : i + 16], **kw), otok(texts[i : i + 16], **kw)
            same_ids &= a["input_ids"].shape == b["input_ids"].shape
            ha, hb = model(**a).last_hidden_state, omodel(**b).last_hidden_state
            worst = max(worst, float((ha - hb).abs().max()))
    print(json.dumps({"vocab": len(tok), "rows": model.get_input_embeddings().weight.shape[0],
                      "max_abs_diff": worst, "same_shapes": bool(same_ids)}))
    """
)


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, bbc_texts):
    path = tmp_path_factory.mktemp("data") / "news.jsonl"
    texts = bbc_texts["text"][::75]
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts), encoding="utf-8")
    return path, texts


def test_issue_check_standalone_default(tmp_path, capsys, minilm_dir, bbc_texts):
    """The issue's check: prune --max-length 128 --out DIR --standalone on the default."""
    out = tmp_path / "standalone"
    code, stdout, stderr = run_cli(
        capsys, "prune", "--max-length", "128", "--out", str(out), "--standalone", "--json"
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["examples"] == 2225
    assert report["ids_in_data"] == 13815  # as `analyze --max-length 128` counts
    assert report["changed_examples"] == 0 and report["changed_tokens"] == 0
    assert report["tokenizer_check_examples"] == 2225
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(bbc_texts["text"][::50]))
    script = tmp_path / "stock_check.py"
    script.write_text(STOCK_CHECK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(out), str(minilm_dir), str(texts_file), "128"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["vocab"] == result["rows"] == report["kept_tokens"]
    assert result["same_shapes"]
    assert result["max_abs_diff"] <= 1e-5


def _bpe_tokenizer_json(merges):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate("abcd")}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return json.loads(tok.to_str()), tok


def test_merge_closure_keeps_intermediate_tokens():
    from tokenizers import Tokenizer

    data, tok = _bpe_tokenizer_json([("a", "b"), ("ab", "c"), ("c", "d")])
    enc = tok.encode("abc cd")
    assert enc.tokens == ["abc", "cd"]
    kept = sorted(set(enc.ids) | {tok.token_to_id(c) for c in "abcd"})
    need = required_ids(data, kept)
    assert need == {tok.token_to_id("ab")}
    good = Tokenizer.from_str(json.dumps(rewrite_tokenizer_json(data, sorted(set(kept) | need))))
    assert good.encode("abc cd").tokens == ["abc", "cd"]
    # Without the intermediate token the merge to "abc" is gone: the split changes.
    bad = Tokenizer.from_str(json.dumps(rewrite_tokenizer_json(data, kept)))
    assert bad.encode("abc cd").tokens != ["abc", "cd"]
    assert merge_closure(data, [tok.token_to_id("abc")]) >= {tok.token_to_id("ab")}


def _rewrite_roundtrip(tokenizer, texts, max_length):
    from tokenizers import Tokenizer

    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    ids = sorted({i for e in enc for i in e} | set(tokenizer.all_special_ids))
    data = tokenizer_json(tokenizer)
    kept = sorted(set(ids) | required_ids(data, ids))
    new = Tokenizer.from_str(json.dumps(rewrite_tokenizer_json(data, kept)))
    new.enable_truncation(max_length)
    table = {old: n for n, old in enumerate(kept)}
    for text, old in zip(texts, enc, strict=True):
        assert new.encode(text).ids == [table[i] for i in old]
    return new, kept


def test_byte_level_bpe_rewrite_smollm2(bbc_texts):
    from transformers import AutoTokenizer

    from vocabprune.fixtures import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    # no truncation: every word of these texts is whole
    texts = bbc_texts["text"][::60]
    new, kept = _rewrite_roundtrip(tokenizer, texts, 100_000)
    assert len(kept) < len(tokenizer) // 2
    # Text the corpus never had still tokenizes (byte symbols are kept) and decodes back.
    other = "Zürich’s 🚀 naïve façade — ½ price!"
    ids = new.encode(other).ids
    assert new.decode(ids) == other
    assert len(ids) >= len(tokenizer(other)["input_ids"])


def test_unigram_rewrite_e5(bbc_texts):
    from transformers import AutoTokenizer

    from vocabprune.fixtures import e5_path

    tokenizer = AutoTokenizer.from_pretrained(e5_path())
    texts = bbc_texts["text"][::150]
    new, kept = _rewrite_roundtrip(tokenizer, texts, 100_000)
    scores = [s for _p, s in tokenizer_json(tokenizer)["model"]["vocab"]]
    assert int(np.argmin(scores)) in kept  # fixes the unknown-character score
    assert new.get_vocab_size() == len(kept)


def test_compact_roundtrip_and_existing_out(tmp_path, capsys, small_corpus):
    out = tmp_path / "compact"
    args = ["prune", "--data", str(small_corpus[0]), "--max-length", "64", "--out", str(out)]
    code, stdout, stderr = run_cli(capsys, *args, "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["kept_tokens"] == report["ids_in_data"] + report["extra_ids"]
    code, _, stderr = run_cli(capsys, *args)
    assert code == 2
    assert stderr.count("\n") == 1 and "already exists" in stderr
    code, stdout, stderr = run_cli(capsys, *args, "--overwrite")
    assert code == 0, stderr
    assert "compact model written" in stdout


def test_lossy_min_count_reports_changed_tokens(tmp_path, capsys, small_corpus, minilm_tokenizer):
    out = tmp_path / "lossy"
    code, stdout, stderr = run_cli(
        capsys,
        "prune",
        "--data",
        str(small_corpus[0]),
        "--max-length",
        "64",
        "--min-count",
        "3",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    enc = minilm_tokenizer(small_corpus[1], truncation=True, max_length=64)["input_ids"]
    counts = np.bincount(np.concatenate(enc), minlength=30522)
    rare = (counts > 0) & (counts < 3)
    rare[minilm_tokenizer.all_special_ids] = False
    assert report["lossy"] and report["unknown"] == "unk"
    assert report["changed_tokens"] == int(counts[rare].sum()) > 0
    assert report["kept_tokens"] < int((counts > 0).sum())
    model, tokenizer = load_compact(out)  # rare tokens map to UNK
    batch = tokenizer(
        small_corpus[1][:2], truncation=True, max_length=64, return_tensors="pt", padding=True
    )
    model(**batch)


def test_lossy_target_size_standalone_bpe(tmp_path, small_corpus):
    from transformers import AutoTokenizer

    from vocabprune.fixtures import smollm2_path

    tiny = tmp_path / "tiny"
    _tiny_llama(tiny, AutoTokenizer.from_pretrained(smollm2_path()))
    out = tmp_path / "target"
    report = run_prune(
        PruneOptions(
            out=str(out),
            model=str(tiny),
            data=[str(small_corpus[0])],
            max_length=64,
            standalone=True,
            target_size=1200,
        )
    )
    assert report["kept_tokens"] <= 1200
    assert report["changed_tokens"] > 0 and report["changed_examples"] > 0
    new = AutoTokenizer.from_pretrained(out)
    assert len(new) == report["kept_tokens"]
    text = small_corpus[1][0][:200]
    assert new.decode(new(text)["input_ids"]) == text  # byte fallback: nothing lost
    model, tokenizer = load_compact(out)  # stock objects, reading the rewritten tokenizer's ids
    assert len(tokenizer) == report["kept_tokens"]
    model(**tokenizer(text, return_tensors="pt"))
    original = AutoTokenizer.from_pretrained(smollm2_path())(text, return_tensors="pt")
    assert int(original["input_ids"].max()) >= report["kept_tokens"]
    with pytest.raises(VocabPruneError, match="reads the ids of its own tokenizer"):
        model(**original)  # the original tokenizer's ids: one line, not an IndexError


def _tiny_llama(folder: Path, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("bad") / "compact"
    run_prune(PruneOptions(out=str(out), data=[str(small_corpus[0])], max_length=32))
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_kept_vocab_of_another_tokenizer_is_refused(tmp_path, export_dir):
    folder = _copy(export_dir, tmp_path / "x")
    data = json.loads((folder / "kept_vocab.json").read_text())
    data["tokenizer_fingerprint"] = "0123456789abcdef"
    (folder / "kept_vocab.json").write_text(json.dumps(data))
    with pytest.raises(MismatchError, match="another tokenizer"):
        load_compact(folder)


def test_kept_vocab_of_another_model_is_refused(tmp_path, export_dir):
    folder = _copy(export_dir, tmp_path / "x")
    data = json.loads((folder / "kept_vocab.json").read_text())
    data["kept_ids"] = data["kept_ids"][:-1]
    data["counts"] = data["counts"][:-1]
    (folder / "kept_vocab.json").write_text(json.dumps(data))
    with pytest.raises(MismatchError, match="does not match"):
        load_compact(folder)


@pytest.mark.parametrize(
    "name", ["model.safetensors", "config.json", "kept_vocab.json", "vocabprune_export.json"]
)
def test_truncated_files_are_one_clear_error(tmp_path, export_dir, name):
    folder = _copy(export_dir, tmp_path / "x")
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VocabPruneError, match="truncated|not valid JSON") as info:
        load_compact(folder)
    assert "\n" not in str(info.value)


def test_corrupt_safetensors_header(tmp_path, export_dir):
    folder = _copy(export_dir, tmp_path / "x")
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[8:16] = b"\xff" * 8
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(VocabPruneError, match="safetensors"):
        load_compact(folder)


def test_error_exit_for_missing_model(tmp_path, capsys):
    code, _, stderr = run_cli(
        capsys, "prune", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")
    )
    assert code == 2 and stderr.startswith("vocabprune: error:") and stderr.count("\n") == 1


def test_failure_during_write_keeps_previous_export(tmp_path, export_dir, monkeypatch):
    import vocabprune.deploy.export as export

    folder = _copy(export_dir, tmp_path / "prev")
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export.KeptVocab, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_pruned(*_model_and_kept(), folder, overwrite=True)
    after = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["prev"]  # no temporary folder left


def _model_and_kept():
    from transformers import AutoModel, AutoTokenizer

    from vocabprune.data.scan import build_kept_vocab
    from vocabprune.fixtures import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path())
    return model, tok, build_kept_vocab(tok, ["a few words"], model=model)


KILL_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import transformers.modeling_utils as mu

    def killer(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)

    mu.safe_save_file = killer
    from vocabprune.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_killed_writer_leaves_previous_export(tmp_path, export_dir, small_corpus):
    folder = _copy(export_dir, tmp_path / "prev")
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    script = tmp_path / "kill.py"
    script.write_text(KILL_WRITER)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "prune",
            "--data",
            str(small_corpus[0]),
            "--max-length",
            "32",
            "--out",
            str(folder),
            "--overwrite",
        ],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    after = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    load_compact(folder)  # still a good export
