"""sentence-transformers with a pruned model: encode, SentenceTransformerTrainer (stock collator,
losses, evaluators during training), save while pruned, load_pruned, restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vocabprune as vp

st = pytest.importorskip("sentence_transformers")
datasets = pytest.importorskip("datasets")

TEXTS = [
    "the president said on monday that the government will",
    "shares in the bank fell sharply after the results",
]


@pytest.fixture(scope="module")
def pairs(bbc_texts):
    """(title, first 300 characters of the body) of BBC News articles: a contrastive set."""
    articles = [t for t in bbc_texts["text"] if "\n" in t][:40]
    titles = [a.split("\n", 1)[0].strip() for a in articles]
    bodies = [a.split("\n", 1)[1].strip()[:300] for a in articles]
    return titles, bodies


def _st_modules():
    """(losses, evaluation) of sentence-transformers (moved under .sentence_transformer in 6)."""
    try:
        from sentence_transformers.sentence_transformer import evaluation, losses
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import evaluation, losses
    return losses, evaluation


def _model(minilm_dir):
    return st.SentenceTransformer(str(minilm_dir), device="cpu")


def test_encode_while_pruned_equals_unpruned(minilm_dir, pairs):
    model = _model(minilm_dir)
    titles, bodies = pairs
    probe = [*TEXTS, *titles[:4]]
    want = model.encode(probe, convert_to_tensor=True)
    kept = vp.build_kept_vocab(model, titles, bodies, TEXTS)  # the ST's tokenizer and model
    assert kept.vocab_size == 30522
    vp.prune(model, kept)
    assert vp.is_pruned(model) and model[0].auto_model.get_input_embeddings().num_embeddings < 30522
    got = model.encode(probe, convert_to_tensor=True)
    assert (got - want).abs().max().item() <= 1e-6
    with pytest.raises(vp.UnknownTokenError, match="not in the kept vocabulary"):
        model.encode(["xylophone quartet"])
    vp.restore(model)
    assert torch.equal(model.encode(probe, convert_to_tensor=True), want)


def _train(model, pairs, tmp_path, loss_name):
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    losses, evaluation = _st_modules()
    InformationRetrievalEvaluator = evaluation.InformationRetrievalEvaluator  # noqa: N806

    titles, bodies = pairs
    if loss_name == "mnrl":
        train = datasets.Dataset.from_dict({"anchor": titles[:32], "positive": bodies[:32]})
        loss = losses.MultipleNegativesRankingLoss(model)
    else:  # CoSENT on scored pairs: matching title/body 1.0, mismatched 0.0
        score = [float(i % 2 == 0) for i in range(32)]
        second = [bodies[i] if i % 2 == 0 else bodies[(i + 5) % 32] for i in range(32)]
        train = datasets.Dataset.from_dict(
            {"sentence1": titles[:32], "sentence2": second, "score": score}
        )
        loss = losses.CoSENTLoss(model)
    held = range(32, 40)
    evaluator = InformationRetrievalEvaluator(
        {str(i): titles[i] for i in held},
        {str(i): bodies[i] for i in held},
        {str(i): {str(i)} for i in held},
        name="bbc",
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-4,
        weight_decay=0.01,
        seed=1,
        report_to="none",
        save_strategy="no",
        eval_strategy="steps",
        eval_steps=2,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train,
        loss=loss,
        evaluator=evaluator,
        callbacks=[vp.VocabPruneCallback()],  # exact weight decay for the dropped rows
    )
    trainer.train()
    return evaluator(model)


@pytest.mark.parametrize("loss_name", ["mnrl", "cosent"])
def test_trainer_pruned_plus_restore_equals_unpruned(minilm_dir, pairs, tmp_path, loss_name):
    full = _model(minilm_dir)
    want_metrics = _train(full, pairs, tmp_path / "full", loss_name)
    model = _model(minilm_dir)
    kept = vp.build_kept_vocab(model, *pairs)
    vp.prune(model, kept)
    got_metrics = _train(model, pairs, tmp_path / "pruned", loss_name)
    # The evaluator ran on the pruned model during training and after it, on tokenizer ids.
    assert got_metrics == pytest.approx(want_metrics, abs=1e-6)
    # Saved while pruned: a full-vocabulary folder that stock SentenceTransformer loads.
    model.save(str(tmp_path / "saved"))
    vp.restore(model)
    got, want = model.state_dict(), full.state_dict()
    assert got.keys() == want.keys()
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-5
    stock = st.SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert stock[0].auto_model.get_input_embeddings().num_embeddings == 30522
    assert torch.equal(
        stock.encode(TEXTS, convert_to_tensor=True), model.encode(TEXTS, convert_to_tensor=True)
    )


def test_load_pruned_sentence_transformer(minilm_dir, pairs):
    full = _model(minilm_dir)
    want = full.encode(TEXTS, convert_to_tensor=True)
    kept = vp.build_kept_vocab(full, *pairs, TEXTS)
    model = vp.load_pruned(st.SentenceTransformer, minilm_dir, kept, device="cpu")
    inner = model[0].auto_model
    assert vp.is_pruned(model) and inner.get_input_embeddings().num_embeddings == kept.size
    assert all(p.device.type == "cpu" for p in model.parameters())
    got = model.encode(TEXTS, convert_to_tensor=True)
    assert (got - want).abs().max().item() <= 1e-6
    vp.restore(model)
    for name, value in full.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_prompts_are_kept(minilm_dir):
    model = _model(minilm_dir)
    model.prompts = {"query": "query: ", "document": "passage: "}
    kept = vp.build_kept_vocab(model, ["markets fell"])
    for prompt in ("query:", "passage:"):
        for i in model.tokenizer(prompt, add_special_tokens=False)["input_ids"]:
            assert i in kept, (prompt, i)
    vp.prune(model, kept)
    model.encode(["markets fell"], prompt_name="query")  # no unknown token


class _Two(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b


def test_wrappers_with_several_models_or_none_are_refused(minilm_dir):
    model = _model(minilm_dir)
    kept = vp.build_kept_vocab(model, ["markets fell"])
    inner = model[0].auto_model
    before = inner.get_input_embeddings().weight.detach().clone()
    with pytest.raises(vp.UnsupportedModelError, match="holds 2 transformers models"):
        vp.prune(_Two(inner, _model(minilm_dir)[0].auto_model), kept)
    with pytest.raises(vp.UnsupportedModelError, match="holds no transformers model"):
        vp.prune(nn.Sequential(nn.Linear(2, 2)), kept)
    assert not vp.is_pruned(model) and torch.equal(inner.get_input_embeddings().weight, before)


def test_kept_vocabulary_for_another_tokenizer_is_refused(minilm_dir):
    model = _model(minilm_dir)
    kept = vp.build_kept_vocab(model, ["markets fell"])
    model.tokenizer.add_tokens(["brandnewtoken"])
    with pytest.raises(vp.MismatchError, match="another tokenizer"):
        vp.prune(model, kept)
    assert not vp.is_pruned(model)


@pytest.mark.slow
def test_multilingual_e5_with_prompts(bbc_texts):
    """multilingual-e5-small as a SentenceTransformer (mean pooling, "query: " prompts)."""
    from sentence_transformers import models

    from vocabprune.fixtures import e5_path

    path = str(e5_path())
    model = st.SentenceTransformer(
        modules=[models.Transformer(path), models.Pooling(384, "mean")], device="cpu"
    )
    model.prompts = {"query": "query: ", "document": "passage: "}
    texts = list(bbc_texts["text"][:20])
    probe = ["Die Regierung sagte am Montag", "shares fell sharply", texts[3][:200]]
    want = model.encode(probe, prompt_name="query", convert_to_tensor=True)
    kept = vp.build_kept_vocab(model, texts, [f"query: {t}" for t in probe], max_length=128)
    assert kept.vocab_size == 250_037 and kept.size < 20_000
    vp.prune(model, kept)
    got = model.encode(probe, prompt_name="query", convert_to_tensor=True)
    assert (got - want).abs().max().item() <= 1e-6
    vp.restore(model)
    assert torch.equal(model.encode(probe, prompt_name="query", convert_to_tensor=True), want)


def test_cli_sentence_embedding_task(tmp_path):
    """`vocabprune finetune --task sentence-embedding` on the embedded default (BBC News title /
    body pairs): pruned + restore equals --no-prune, and the folder is a SentenceTransformer."""
    import json

    from vocabprune.cli.main import main

    argv = ["finetune", "--task", "sentence-embedding", "--limit", "40", "--max-steps", "3"]
    argv += ["--batch-size", "8", "--weight-decay", "0.01", "--json"]
    assert main([*argv, "--out", str(tmp_path / "pruned")]) == 0
    assert main([*argv, "--out", str(tmp_path / "full"), "--no-prune"]) == 0
    report = json.loads((tmp_path / "pruned" / "vocabprune_run.json").read_text())
    assert report["task"] == "sentence-embedding" and report["pruned"]
    assert report["kept_tokens"] < report["vocab_size"] == 30522
    assert 0 <= report["eval_accuracy"] <= 1 and 0 < report["eval_mrr"] <= 1
    pruned = st.SentenceTransformer(str(tmp_path / "pruned"), device="cpu")
    full = st.SentenceTransformer(str(tmp_path / "full"), device="cpu")
    got, want = pruned.state_dict(), full.state_dict()
    assert pruned[0].auto_model.get_input_embeddings().num_embeddings == 30522
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-5


def test_analyze_task_counts_what_the_sentence_embedding_task_trains_on(
    tmp_path, pairs, minilm_tokenizer, capsys
):
    """One encoding rule (data/tasks.py): `analyze --task sentence-embedding` counts each column
    alone at the task's length, so its --save-kept is what `finetune --task sentence-embedding
    --kept` needs; a pair truncated together (classification) lacks ids the task reads."""
    import json

    from vocabprune.cli.main import main

    data = tmp_path / "pairs.jsonl"
    rows = [json.dumps({"a": a, "b": b}) for a, b in zip(*pairs, strict=True)][:12]
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    common = ["--data", str(data), "--text-column", "a,b", "--max-length", "16"]
    for task in ("sentence-embedding", "classification"):
        argv = ["analyze", *common, "--task", task, "--json"]
        assert main([*argv, "--save-kept", str(tmp_path / f"{task}.json")]) == 0
    report = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")
    enc = minilm_tokenizer(pairs[0][:12] + pairs[1][:12], truncation=True, max_length=16)
    want = {i for row in enc["input_ids"] for i in row}
    assert report["task"] == "sentence-embedding" and report["ids_in_data"] == len(want)
    kept = vp.KeptVocab.load(tmp_path / "sentence-embedding.json")
    assert want <= set(kept.kept_ids.tolist())
    assert report["columns_ids_in_all"] <= report["ids_in_data"]
    finetune = ["finetune", *common, "--task", "sentence-embedding", "--max-steps", "1"]
    finetune += ["--batch-size", "4", "--json"]
    argv = [*finetune, "--kept", str(tmp_path / "classification.json")]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    assert "lacks" in capsys.readouterr().err
    argv = [*finetune, "--kept", str(tmp_path / "sentence-embedding.json")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["kept_tokens"] == kept.size


@pytest.mark.slow
def test_sentence_embedding_task_leaves_out_a_pooler_the_checkpoint_lacks(tmp_path, caplog):
    """The packaged e5 has no pooler and mean pooling never reads one: the task builds none (no
    random, unseeded 147,840 parameters in the output or the counts, no MISSING load report)."""
    import json
    import logging

    from safetensors import safe_open

    from vocabprune.cli.main import main
    from vocabprune.fixtures import e5_path

    e5 = e5_path()
    argv = ["finetune", "--task", "sentence-embedding", "--model", str(e5), "--limit", "16"]
    argv += ["--max-steps", "1", "--batch-size", "4", "--max-length", "32", "--json"]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert "MISSING" not in caplog.text
    report = json.loads((tmp_path / "out" / "vocabprune_run.json").read_text())
    assert report["full_trainable_params"] == 117_505_920  # docs/fixtures.md: no pooler
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        names = list(f.keys())  # noqa: SIM118 - safe_open is not a dict
    assert names and not [k for k in names if "pooler" in k]


def test_standalone_export_loads_as_the_source_sentence_transformer(
    minilm_dir, bbc_texts, tmp_path, capsys
):
    """`prune --standalone` of a sentence-transformers folder copies its modules (pooling,
    normalize, max length): SentenceTransformer(export) embeds covered text as the source does,
    normalized; converting that folder to ONNX keeps them too."""
    import json

    from vocabprune.cli.main import main

    texts = bbc_texts["text"][::150]
    data = tmp_path / "news.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in texts), encoding="utf-8")
    out = tmp_path / "standalone"
    argv = ["prune", "--data", str(data), "--max-length", "256", "--standalone", "--out", str(out)]
    assert main(argv) == 0
    said = "sentence-transformers modules copied from the source: Transformer, Pooling, Normalize"
    assert said in capsys.readouterr().out
    source, export = _model(minilm_dir), st.SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in export] == [type(m).__name__ for m in source]
    assert export.max_seq_length == source.max_seq_length == 256
    want, got = source.encode(texts), export.encode(texts)
    assert got.shape == want.shape
    assert abs(float((got**2).sum(1).max()) - 1) < 1e-5  # the Normalize module came along
    assert float(abs(got - want).max()) < 1e-5
    manifest = json.loads((out / "vocabprune_export.json").read_text())
    assert manifest["sentence_transformers"] == ["Transformer", "Pooling", "Normalize"]

    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "onnx"
    vp.export_onnx(out, onnx)
    assert json.loads((onnx / "modules.json").read_text()) == json.loads(
        (minilm_dir / "modules.json").read_text()
    )
    assert (onnx / "1_Pooling" / "config.json").read_bytes() == (
        minilm_dir / "1_Pooling" / "config.json"
    ).read_bytes()


def test_sentence_transformers_files_of_an_older_layout_and_bad_paths(tmp_path):
    """A transformer in a subfolder (older layout) is written at the export's root; a module
    path leaving the folder is one clear error, nothing copied."""
    import json

    from vocabprune.deploy.sentence_files import (
        copy_sentence_transformers_files,
        sentence_transformers_pooling,
    )

    source, out = tmp_path / "source", tmp_path / "out"
    (source / "0_Transformer").mkdir(parents=True)
    (source / "1_Pooling").mkdir()
    out.mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "x.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.models.Pooling"},
    ]
    (source / "modules.json").write_text(json.dumps(modules))
    (source / "0_Transformer" / "sentence_bert_config.json").write_text('{"max_seq_length": 7}')
    (source / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert copy_sentence_transformers_files(source, out) == ["Transformer", "Pooling"]
    assert json.loads((out / "modules.json").read_text())[0]["path"] == ""
    assert json.loads((out / "sentence_bert_config.json").read_text()) == {"max_seq_length": 7}
    assert sentence_transformers_pooling(out) == "CLS"
    assert copy_sentence_transformers_files(tmp_path / "plain", out) == []

    modules[1]["path"] = "../elsewhere"
    (source / "modules.json").write_text(json.dumps(modules))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(vp.VocabPruneError, match="leaves the model folder"):
        copy_sentence_transformers_files(source, fresh)
    assert list(fresh.iterdir()) == []


def test_standalone_export_of_a_sentence_transformer_object_writes_its_modules(
    minilm_dir, pairs, tmp_path
):
    """A SentenceTransformer given to the Python export writes its own modules as they are in
    memory (here a dense layer no folder holds): the export embeds as the object does."""
    import json

    from vocabprune.deploy.export import export_pruned

    base = _model(minilm_dir)
    torch.manual_seed(0)
    dense = st.models.Dense(base[0].auto_model.config.hidden_size, 16)
    model = st.SentenceTransformer(modules=[*base, dense], device="cpu")
    titles, bodies = pairs
    kept = vp.build_kept_vocab(model, titles, max_length=64)
    out = tmp_path / "export"
    _, _, report = export_pruned(model, model.tokenizer, kept, out, standalone=True, unknown="unk")
    assert report["sentence_transformers"] == ["Transformer", "Pooling", "Normalize", "Dense"]
    assert not (out / ".sentence-transformers").exists()
    assert json.loads((out / "vocabprune_export.json").read_text())["sentence_transformers"]
    export = st.SentenceTransformer(str(out), device="cpu")
    rows = export[0].auto_model.get_input_embeddings().num_embeddings
    assert rows == vp.KeptVocab.load(out / "kept_vocab.json").size < 30522
    want, got = model.encode(titles), export.encode(titles)
    assert got.shape == want.shape == (len(titles), 16)
    assert float(abs(got - want).max()) < 1e-5
    assert not vp.is_pruned(model)  # restored after the write, as it came


def test_prune_keeps_the_sources_sentence_transformers_prompts(minilm_dir, tmp_path, capsys):
    """The prompts a sentence-transformers folder prepends ("query: ", ...) are read with every
    text it encodes: `prune` keeps their ids though the data never has them."""
    import json

    from transformers import AutoTokenizer

    from vocabprune.cli.main import main

    source = tmp_path / "source"
    source.mkdir()
    for item in minilm_dir.iterdir():
        if item.is_file():
            (source / item.name).write_bytes(item.read_bytes())
    (source / "1_Pooling").mkdir()
    pooling = (minilm_dir / "1_Pooling" / "config.json").read_bytes()
    (source / "1_Pooling" / "config.json").write_bytes(pooling)
    config = json.loads((source / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": "zebra question: ", "passage": ""}
    (source / "config_sentence_transformers.json").write_text(json.dumps(config))
    data = tmp_path / "data.txt"
    data.write_text("the bank said profits rose\nshares fell on monday\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["prune", "--model", str(source), "--data", str(data), "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    prompt = AutoTokenizer.from_pretrained(source)("zebra question: ", add_special_tokens=False)
    kept = vp.KeptVocab.load(out / "kept_vocab.json")
    assert report["prompt_ids"] == len(set(prompt["input_ids"])) == 3
    assert all(int(i) in kept for i in prompt["input_ids"])
