"""Scanning: every source kind gives the same counts as tokenizing and counting by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import vocabprune as vp
from vocabprune.core.errors import ScanError


def _reference(tokenizer, texts, pairs=None, max_length=None):
    """Counts computed the slow, obvious way: one Python loop over every token."""
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    for i, text in enumerate(texts):
        enc = tokenizer(text, pairs[i], **kwargs) if pairs else tokenizer(text, **kwargs)
        for tid in enc["input_ids"]:
            counts[tid] += 1
    return counts


SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruning keeps only the rows the data uses!",
    "Zebras, quaggas and okapis: rare words split into pieces.",
    "Ünïcödé àccents and emoji 🙂 go to [UNK] or pieces.",
]


def test_list_of_strings_matches_reference(minilm_tokenizer):
    result = vp.scan(minilm_tokenizer, SAMPLES)
    ref = _reference(minilm_tokenizer, SAMPLES)
    assert np.array_equal(result.counts, ref)
    assert result.total_tokens == ref.sum()
    assert result.num_examples == len(SAMPLES)


def test_truncation_counts_only_kept_positions(minilm_tokenizer):
    result = vp.scan(minilm_tokenizer, SAMPLES, max_length=6)
    ref = _reference(minilm_tokenizer, SAMPLES, max_length=6)
    assert np.array_equal(result.counts, ref)
    assert result.total_tokens == 6 * len(SAMPLES)


def test_files_of_every_kind_agree(minilm_tokenizer, tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("\n".join(SAMPLES) + "\n\n")
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": s, "label": i}) for i, s in enumerate(SAMPLES)))
    csv_path = tmp_path / "a.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["body", "label"])
        writer.writeheader()
        for i, s in enumerate(SAMPLES):
            writer.writerow({"body": s, "label": i})
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": SAMPLES, "label": list(range(len(SAMPLES)))}), parquet)
    ref = _reference(minilm_tokenizer, SAMPLES)
    for path, column in [(txt, None), (jsonl, None), (csv_path, "body"), (parquet, "text")]:
        result = vp.scan(minilm_tokenizer, path, text_column=column)
        assert np.array_equal(result.counts, ref), path.suffix
        assert result.num_examples == len(SAMPLES)


def test_sentence_pairs(minilm_tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    firsts, seconds = SAMPLES[:2], SAMPLES[2:]
    path.write_text(
        "\n".join(json.dumps({"s1": a, "s2": b}) for a, b in zip(firsts, seconds, strict=True))
    )
    result = vp.scan(minilm_tokenizer, path, text_column="s1,s2")
    assert np.array_equal(result.counts, _reference(minilm_tokenizer, firsts, seconds))
    sep = minilm_tokenizer.sep_token_id
    assert result.counts[sep] == 2 * len(firsts)  # a pair has two [SEP]


def test_labelled_folder_and_union_of_splits(minilm_tokenizer, tmp_path):
    for label, texts in {"pos": SAMPLES[:2], "neg": SAMPLES[2:]}.items():
        (tmp_path / "train" / label).mkdir(parents=True)
        for i, t in enumerate(texts):
            (tmp_path / "train" / label / f"{i:03d}.txt").write_text(t)
    (tmp_path / "test.txt").write_text("an unseen evaluation sentence about elephants\n")
    result = vp.scan(minilm_tokenizer, tmp_path / "train", tmp_path / "test.txt")
    assert set(result.splits) == {str(tmp_path / "train"), str(tmp_path / "test.txt")}
    both = SAMPLES[2:] + SAMPLES[:2] + ["an unseen evaluation sentence about elephants"]
    assert np.array_equal(result.counts, _reference(minilm_tokenizer, both))
    giraffe = minilm_tokenizer.vocab["elephants"]
    assert result.splits[str(tmp_path / "train")].counts[giraffe] == 0
    assert result.counts[giraffe] == 1


def test_datasets_text_and_pretokenized(minilm_tokenizer):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"sentence": SAMPLES, "label": [0, 1, 0, 1]})
    ref = _reference(minilm_tokenizer, SAMPLES)
    assert np.array_equal(vp.scan(minilm_tokenizer, ds).counts, ref)
    dd = datasets.DatasetDict({"train": ds.select([0, 1]), "test": ds.select([2, 3])})
    result = vp.scan(minilm_tokenizer, dd)
    assert set(result.splits) == {"train", "test"}
    assert np.array_equal(result.counts, ref)
    # Ragged input_ids, and the same ids padded with an attention mask: identical counts.
    enc = minilm_tokenizer(SAMPLES)
    ragged = datasets.Dataset.from_dict({"input_ids": enc["input_ids"]})
    assert np.array_equal(vp.scan(minilm_tokenizer, ragged).counts, ref)
    padded = minilm_tokenizer(SAMPLES, padding="max_length", max_length=64)
    padded_ds = datasets.Dataset.from_dict(dict(padded))
    assert np.array_equal(vp.scan(minilm_tokenizer, padded_ds).counts, ref)
    streamed = ds.to_iterable_dataset()
    assert np.array_equal(vp.scan(minilm_tokenizer, streamed).counts, ref)


def test_bbc_news_matches_measured_numbers(minilm_tokenizer, bbc_dir):
    full = vp.scan(minilm_tokenizer, bbc_dir)
    assert full.num_examples == 2225
    assert full.used_ids == 19968  # FIXTURES.md: 19,968 ids used untruncated
    short = vp.scan(minilm_tokenizer, bbc_dir, max_length=128)
    # FIXTURES.md measured 13,813 decoding every file as latin-1 ("Â£"); we decode UTF-8 first,
    # which reads "£" correctly and uses two ids that mojibake would not.
    assert 13_813 <= short.used_ids <= 13_815
    assert short.total_tokens == 284_780


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "no examples"),
        (["ok"], None),
    ],
)
def test_empty_data_is_an_error(minilm_tokenizer, data, message):
    if message is None:
        assert vp.scan(minilm_tokenizer, data).total_tokens > 0
    else:
        with pytest.raises(ScanError, match=message):
            vp.scan(minilm_tokenizer, data)


def test_bad_sources_name_the_problem(minilm_tokenizer, tmp_path):
    with pytest.raises(ScanError, match="data not found"):
        vp.scan(minilm_tokenizer, tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ScanError, match="empty"):
        vp.scan(minilm_tokenizer, empty)
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(json.dumps({"body": "hello"}))
    with pytest.raises(ScanError, match="text column 'text' not found"):
        vp.scan(minilm_tokenizer, jsonl, text_column="text")
    with pytest.raises(ScanError, match="no text column"):
        vp.scan(minilm_tokenizer, jsonl)
    with pytest.raises(ScanError, match="outside the vocabulary"):
        vp.count_token_ids([[1, 2, 30522]], 30522)
    with pytest.raises(ScanError, match="unsupported file type"):
        bad = tmp_path / "x.xml"
        bad.write_text("<a/>")
        vp.scan(minilm_tokenizer, bad)


def test_kept_vocab_keeps_specials_and_round_trips(minilm_tokenizer, tmp_path):
    kept = vp.build_kept_vocab(minilm_tokenizer, ["hello world"])
    for tid in minilm_tokenizer.all_special_ids:  # [MASK] kept although the data has none
        assert tid in kept
    hello = minilm_tokenizer.convert_tokens_to_ids("hello")
    assert hello in kept and kept.counts[kept.new_id(hello)] == 1
    path = kept.save(tmp_path)
    assert path.name == "kept_vocab.json"
    assert vp.KeptVocab.load(tmp_path) == kept
    path.write_text("{not json")
    with pytest.raises(vp.VocabPruneError, match="not valid JSON"):
        vp.KeptVocab.load(path)


def test_one_reader_keeps_texts_pairs_and_labels_aligned_across_files(tmp_path):
    """Every job reads through read_examples: rows of several files (of different lengths, with
    sentence pairs) stay aligned text-for-pair-for-label, in file order."""
    from vocabprune.data.sources import read_examples

    rows_a = [{"q": f"question a{i}", "d": f"answer a{i}", "label": f"la{i % 2}"} for i in range(3)]
    rows_b = [{"q": f"question b{i}", "d": f"answer b{i}", "label": f"lb{i % 3}"} for i in range(5)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows_a))
    with open(tmp_path / "b.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "d", "q"])  # other column order
        writer.writeheader()
        writer.writerows(rows_b)
    paths = [tmp_path / "a.jsonl", tmp_path / "b.csv"]
    got = read_examples(paths, "q,d", labels=True)
    want = rows_a + rows_b
    assert got.texts == [r["q"] for r in want]
    assert got.pairs == [r["d"] for r in want]
    assert got.labels == [r["label"] for r in want]
    assert got.joined(" | ")[4] == "question b1 | answer b1"
    single = read_examples(paths, "q")
    assert single.pairs is None and single.labels is None and len(single) == 8
    (tmp_path / "c.csv").write_text("q,label\nonly a question,x\n")
    with pytest.raises(ScanError, match=r"c\.csv: text column 'd' not found"):
        read_examples([*paths, tmp_path / "c.csv"], "q,d")
