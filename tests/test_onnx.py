"""`prune --standalone --format onnx` / `vp.export_onnx`: the ONNX folder runs in ONNX Runtime and
gives the full PyTorch model's outputs on text the kept vocabulary covers (MiniLM, e5, SmolLM2
with its KV cache, tiny config-built decoders); what a standalone export does with uncovered
tokens (manifest, CLI summary, probe coverage); the options it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import vocabprune as vp  # noqa: E402
from vocabprune.cli.main import main  # noqa: E402
from vocabprune.deploy.coverage import uncovered_mapping  # noqa: E402
from vocabprune.deploy.onnx import Graph, session, write_onnx  # noqa: E402
from vocabprune.deploy.tokenizer_rewrite import tokenizer_json  # noqa: E402

FP32_TOL = 1e-5
# int8 dynamic quantization (QInt8 weights per channel, activations quantized per call):
# measured cosine of the mean-pooled MiniLM embeddings 0.991 (lowest of 15 texts) against the
# fp32 model; asserted at 0.98.
INT8_MIN_COSINE = 0.98


def _run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _texts(bbc_texts, step):
    return [t[:400] for t in bbc_texts["text"][::step]]


def _encoder_outputs(folder, texts, name="model.onnx"):
    """(ONNX outputs, attention mask) of the exported encoder on `texts`, via the tokenizer in
    the folder (stock AutoTokenizer: the rewritten one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="np")
    sess = session(folder / "onnx" / name)
    feed = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    return sess.run(None, feed)[0], enc["attention_mask"].astype(bool), enc["input_ids"]


def _full_hidden(model_dir, texts):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).last_hidden_state.numpy(), enc["input_ids"].numpy(), tok


def _pooled(hidden, mask):
    summed = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return summed / np.linalg.norm(summed, axis=1, keepdims=True)


@pytest.mark.slow
def test_minilm_onnx_equals_full_model(tmp_path, minilm_dir, minilm_tokenizer, bbc_texts):
    """Python API: a full model + kept vocabulary -> the ONNX folder (fp32 and int8)."""
    from transformers import AutoModel

    texts = _texts(bbc_texts, 150)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    kept = vp.build_kept_vocab(minilm_tokenizer, texts, model=model, progress=False)
    out = tmp_path / "onnx-minilm"
    report = vp.export_onnx(model, out, tokenizer=minilm_tokenizer, kept=kept, quantize=True)
    assert not vp.is_pruned(model)  # pruned for the write, restored after
    assert (out / "onnx" / "model.onnx").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer.json").is_file() and not (out / "model.safetensors").exists()
    assert report["task"] == "feature-extraction" and report["outputs"] == ["last_hidden_state"]
    manifest = json.loads((out / "vocabprune_export.json").read_text())
    assert manifest["weights_format"] == "onnx" and manifest["uncovered"]["mapping"] == "unk"
    got, mask, new_ids = _encoder_outputs(out, texts)
    want, old_ids, _ = _full_hidden(minilm_dir, texts)
    written = vp.KeptVocab.load(out / "kept_vocab.json")
    assert np.array_equal(written.kept_ids[new_ids], old_ids)  # the same tokens, renumbered
    assert np.abs(got - want)[mask].max() <= FP32_TOL
    q, _, _ = _encoder_outputs(out, texts, "model_quantized.onnx")
    cosine = (_pooled(q, mask) * _pooled(want, mask)).sum(1)
    assert cosine.min() >= INT8_MIN_COSINE
    with pytest.raises(vp.VocabPruneError, match="onnx weights"):
        vp.load_compact(out)


def test_export_onnx_refuses_a_compact_export(tmp_path, minilm_dir, minilm_tokenizer):
    from transformers import AutoModel

    from vocabprune.deploy.export import export_pruned

    model = AutoModel.from_pretrained(minilm_dir).eval()
    kept = vp.build_kept_vocab(minilm_tokenizer, ["a short text"], model=model, progress=False)
    export_pruned(model, minilm_tokenizer, kept, tmp_path / "compact")
    with pytest.raises(vp.VocabPruneError, match="compact export"):
        vp.export_onnx(tmp_path / "compact", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


@pytest.mark.slow
def test_e5_cli_onnx_equals_full_model(tmp_path, capsys, bbc_texts):
    """`vocabprune prune --standalone --format onnx` on multilingual-e5-small (Unigram)."""
    from vocabprune.fixtures import e5_path

    texts = _texts(bbc_texts, 300)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in texts), encoding="utf-8")
    probe = tmp_path / "probe.txt"
    probe.write_text("Das ist ein ganz anderer Text.\n" + texts[0] + "\n", encoding="utf-8")
    out = tmp_path / "onnx-e5"
    args = ["prune", "--model", str(e5_path()), "--data", str(data), "--out", str(out)]
    code, stdout, stderr = _run_cli(
        capsys, *args, "--standalone", "--format", "onnx", "--probe", str(probe), "--json"
    )
    assert code == 0, stderr
    report = json.loads(stdout[stdout.index("{") :])  # deepspeed may log a line first (on import)
    assert report["format"] == "onnx" and report["onnx"]["max_relative_difference"] <= 1e-4
    assert report["uncovered"]["mapping"] == "unk"  # Unigram without byte fallback
    assert 0 < report["probe_covered_fraction"] < 1  # the German line is not all covered
    manifest = json.loads((out / "vocabprune_export.json").read_text())
    assert manifest["checked"]["probe_covered_fraction"] == report["probe_covered_fraction"]
    got, mask, _ = _encoder_outputs(out, texts)
    want, _, _ = _full_hidden(e5_path(), texts)
    assert np.abs(got - want)[mask].max() <= FP32_TOL


@pytest.fixture(scope="module")
def smollm2_onnx(tmp_path_factory, smollm2_dir, smollm2_tokenizer, bbc_texts):
    """SmolLM2 exported once, pruned to the ids of a few short texts."""
    from transformers import AutoModelForCausalLM

    texts = _texts(bbc_texts, 400)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    kept = vp.build_kept_vocab(smollm2_tokenizer, texts, model=model, progress=False)
    out = tmp_path_factory.mktemp("onnx") / "smollm2"
    report = vp.export_onnx(model, out, tokenizer=smollm2_tokenizer, kept=kept)
    return out, report, model, texts


@pytest.mark.slow
def test_smollm2_onnx_decodes_incrementally_as_full_model(smollm2_onnx, smollm2_tokenizer):
    """Prefill, then one token at a time with the returned cache (as transformers.js decodes):
    the logits equal the full model's at the kept columns, and the tokens are the same."""
    from transformers import AutoTokenizer

    out, report, model, texts = smollm2_onnx
    assert report["task"] == "text-generation-with-past"
    assert report["inputs"][:4] == ["input_ids", "attention_mask", "position_ids"] + [
        "past_key_values.0.key"
    ]
    assert report["outputs"][:2] == ["logits", "present.0.key"]
    kept = vp.KeptVocab.load(out / "kept_vocab.json")
    tok = AutoTokenizer.from_pretrained(out)
    text = texts[1][:200]
    new_ids = tok(text, return_tensors="np")["input_ids"]
    old_ids = smollm2_tokenizer(text, return_tensors="pt")["input_ids"]
    assert np.array_equal(kept.kept_ids[new_ids], old_ids.numpy())
    with torch.no_grad():
        full = model(old_ids).logits[0][:, torch.as_tensor(kept.kept_ids)].numpy()
    sess = session(out / "onnx" / "model.onnx")
    layers = sum(1 for i in sess.get_inputs() if i.name.endswith(".key"))
    heads, dim = sess.get_inputs()[3].shape[1], sess.get_inputs()[3].shape[3]
    past = {
        f"past_key_values.{i}.{kv}": np.zeros((1, heads, 0, dim), np.float32)
        for i in range(layers)
        for kv in ("key", "value")
    }
    n = new_ids.shape[1]
    first = n - 4
    steps = [(0, first)] + [(i, i + 1) for i in range(first, n)]
    worst = 0.0
    for start, stop in steps:
        feed = {
            "input_ids": new_ids[:, start:stop],
            "attention_mask": np.ones((1, stop), np.int64),
            "position_ids": np.arange(start, stop, dtype=np.int64)[None],
            **past,
        }
        logits, *present = sess.run(None, feed)
        past = dict(zip(past, present, strict=True))
        worst = max(worst, float(np.abs(logits[0] - full[start:stop]).max()))
        assert np.array_equal(logits[0].argmax(-1), full[start:stop].argmax(-1))
    assert worst <= FP32_TOL * max(1.0, float(np.abs(full).max()))  # relative to logit size


@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_tiny_decoders_with_cache(tmp_path, family):
    """Config-built decoders (Gemma 3's sliding window shorter than the sequence; Qwen3):
    write_onnx checks batch 3 with left padding and a cache against PyTorch; here again at a
    longer stretch, past the window."""
    import transformers as T

    torch.manual_seed(0)
    if family == "gemma3":
        config = T.Gemma3TextConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=4,
        )
        model = T.Gemma3ForCausalLM(config).eval()
    else:
        config = T.Qwen3Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
        )
        model = T.Qwen3ForCausalLM(config).eval()
    report = write_onnx(model, tmp_path)
    assert report["max_abs_difference"] <= FP32_TOL
    graph = Graph(model)
    from vocabprune.deploy.onnx import max_difference

    assert max_difference(graph, tmp_path / "onnx" / "model.onnx", [(2, 3, 11)])[0] <= FP32_TOL


def test_tiny_sequence_classifier(tmp_path):
    """A classification head: the graph's output is `logits` [batch, labels]; checked at
    batch 1 and 3 (left padding) inside write_onnx, here again at another length."""
    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    model = T.BertForSequenceClassification(config).eval()
    report = write_onnx(model, tmp_path, input_names=["input_ids", "attention_mask"])
    assert report["task"] == "text-classification" and report["outputs"] == ["logits"]
    labels = session(tmp_path / "onnx" / "model.onnx").get_outputs()[0].shape
    assert labels[1] == 3  # [batch, labels]: only the batch axis is dynamic
    assert report["inputs"] == ["input_ids", "attention_mask"]  # as the tokenizer gives
    from vocabprune.deploy.onnx import max_difference

    graph = Graph(model, ["input_ids", "attention_mask"])
    assert max_difference(graph, tmp_path / "onnx" / "model.onnx", [(2, 17, 0)])[0] <= FP32_TOL


def test_uncovered_mapping_per_tokenizer_model(minilm_tokenizer, smollm2_tokenizer):
    assert uncovered_mapping(tokenizer_json(minilm_tokenizer))["mapping"] == "unk"
    smol = uncovered_mapping(tokenizer_json(smollm2_tokenizer))
    assert smol["mapping"] == "byte_pieces" and smol["tokenizer_model"] == "BPE"


def test_cli_summary_says_how_uncovered_tokens_map(tmp_path, capsys, bbc_texts):
    """The default model (MiniLM), standalone hf: the summary names the UNK mapping and the
    probe's covered share; the manifest records both."""
    data = tmp_path / "data.txt"
    data.write_text("\n".join(_texts(bbc_texts, 400)), encoding="utf-8")
    probe = tmp_path / "probe.txt"
    probe.write_text("zebra quokka xylophone\n", encoding="utf-8")
    out = tmp_path / "standalone"
    code, stdout, stderr = _run_cli(
        capsys,
        "prune",
        "--data",
        str(data),
        "--out",
        str(out),
        "--standalone",
        "--probe",
        str(probe),
    )
    assert code == 0, stderr
    assert "the probe text:" in stdout and "the UNK token '[UNK]'" in stdout
    checked = json.loads((out / "vocabprune_export.json").read_text())["checked"]
    assert checked["probe_tokens"] >= 5  # [CLS], 3 words or their pieces, [SEP]
    assert checked["probe_covered_fraction"] < 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "onnx"], "add --standalone"),
        (["--standalone", "--unknown", "error"], "--unknown error cannot hold for --standalone"),
        (["--standalone", "--unknown", "grow"], "--unknown grow cannot hold for --standalone"),
        (["--quantize", "int8"], "--quantize needs --format onnx or gguf"),
        (["--standalone", "--format", "onnx", "--quantize", "int4"], "must be int8"),
    ],
)
def test_refused_options(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    code, _, stderr = _run_cli(capsys, "prune", "--out", str(out), *argv)
    assert code == 2
    assert message in stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_gguf_option_writes_one_gguf_file_from_the_standalone_export(tmp_path, capsys, bbc_texts):
    """--format gguf: the standalone export (in a scratch folder, gone after) written by the GGUF
    writer as the one file --out, in the tensor type --quantize names; llama.cpp's own tests are
    in tests/test_gguf.py."""
    gguf = pytest.importorskip("gguf")
    data = tmp_path / "data.txt"
    data.write_text("\n".join(_texts(bbc_texts, 600)), encoding="utf-8")
    out = tmp_path / "model.gguf"
    argv = ["prune", "--data", str(data), "--out", str(out), "--standalone", "--format", "gguf"]
    code, stdout, stderr = _run_cli(capsys, *argv, "--quantize", "q8_0", "--json")
    assert code == 0, stderr
    report = json.loads(stdout[stdout.index("{") :])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt", "model.gguf"]
    reader = gguf.GGUFReader(str(out))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == report["kept_tokens"]
    summary = report["gguf"]
    assert summary["out"] == str(out) and summary["outtype"] == "q8_0"
    assert summary["tokens"] == report["kept_tokens"] and summary["kept_ids"] is True
    assert summary["bytes"] == out.stat().st_size
    assert summary["pooling"] == "MEAN"  # MiniLM's, read from the source model's folder
    types = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert "Q8_0" in types


@pytest.mark.parametrize("value", ["int8", "q4_0"])
def test_gguf_quantize_names_a_gguf_type(tmp_path, capsys, value):
    argv = ["prune", "--out", str(tmp_path / "x.gguf"), "--standalone", "--format", "gguf"]
    code, _, stderr = _run_cli(capsys, *argv, "--quantize", value)
    assert code == 2 and "--quantize for gguf must be one of f32, f16, q8_0" in stderr


def test_gguf_types_of_the_cli_are_the_writers():
    from vocabprune.cli.options import GGUF_POOLINGS, GGUF_TYPES
    from vocabprune.deploy.gguf import OUTTYPES, POOLINGS

    assert GGUF_TYPES == OUTTYPES
    assert tuple(p.upper() for p in GGUF_POOLINGS) == POOLINGS


def test_gguf_pooling_of_an_embedding_model_without_sentence_transformers_files(
    tmp_path, capsys, minilm_dir, bbc_texts
):
    """An encoder folder without sentence-transformers files: the summary says its GGUF records
    no pooling (llama.cpp would return per-token vectors) and how to set one; --pooling sets it."""
    gguf = pytest.importorskip("gguf")
    plain = tmp_path / "plain"
    plain.mkdir()
    for item in minilm_dir.iterdir():
        if item.is_file() and item.name not in ("modules.json", "sentence_bert_config.json"):
            (plain / item.name).write_bytes(item.read_bytes())
    data = tmp_path / "data.txt"
    data.write_text("\n".join(_texts(bbc_texts, 600)), encoding="utf-8")
    argv = ["prune", "--model", str(plain), "--data", str(data), "--standalone", "--format", "gguf"]
    code, stdout, stderr = _run_cli(capsys, *argv, "--out", str(tmp_path / "none.gguf"))
    assert code == 0, stderr
    assert "the GGUF records no pooling" in stdout and "--pooling mean|cls|last" in stdout
    code, stdout, stderr = _run_cli(
        capsys, *argv, "--out", str(tmp_path / "cls.gguf"), "--pooling", "cls", "--json"
    )
    assert code == 0, stderr
    assert json.loads(stdout[stdout.index("{") :])["gguf"]["pooling"] == "CLS"
    code, stdout, _ = _run_cli(capsys, *argv, "--out", str(tmp_path / "b.gguf"), "--pooling", "cls")
    assert "the GGUF records CLS pooling" in stdout and "MiB as f16 (full" in stdout
    assert "sentence-transformers modules copied" not in stdout
    reader = gguf.GGUFReader(str(tmp_path / "cls.gguf"))
    field = reader.fields["bert.pooling_type"]
    assert int(field.parts[field.data[0]][0]) == int(gguf.PoolingType.CLS)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "onnx", "--pooling", "mean"], "--pooling is for --format gguf"),
        (["--format", "gguf", "--pooling", "max"], "--pooling must be one of none, mean, cls"),
    ],
)
def test_pooling_option_refusals(tmp_path, capsys, extra, message):
    argv = ["prune", "--out", str(tmp_path / "x"), "--standalone", *extra]
    code, _, stderr = _run_cli(capsys, *argv)
    assert code == 2 and message in stderr


@pytest.mark.parametrize("overwrite", [False, True])
def test_gguf_out_that_is_a_folder_is_refused_before_anything_loads(tmp_path, capsys, overwrite):
    """--format gguf writes one file: a folder as --out is one clear error at option time (was:
    "already exists (use --overwrite)", then after loading the model "is a folder")."""
    folder = tmp_path / "existing"
    folder.mkdir()
    argv = ["prune", "--out", str(folder), "--standalone", "--format", "gguf"]
    code, _, stderr = _run_cli(capsys, *argv, *(["--overwrite"] if overwrite else []))
    assert code == 2
    assert stderr.strip().splitlines()[-1].endswith(f"--out {folder} is a folder; give a file name")
    assert "loading" not in stderr and list(folder.iterdir()) == []
