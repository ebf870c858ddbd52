"""analyze as a report: growth curve + Heaps' fit, top-k coverage, split overlap, memory, --plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vocabprune.cli.main import main
from vocabprune.data.accounting import BYTES_PER_PARAM, ParamBudget
from vocabprune.data.growth import (
    coverage_levels,
    growth_curve,
    growth_report,
    heaps_fit,
    split_overlap,
)


def _first_seen_curve(tokens: np.ndarray, n: np.ndarray) -> np.ndarray:
    _, first = np.unique(tokens, return_index=True)
    mark = np.zeros(tokens.size)
    mark[first] = 1
    return np.cumsum(mark)[n - 1]


def test_growth_curve_is_the_expectation_over_random_orders():
    rng = np.random.default_rng(0)
    counts = np.zeros(60, dtype=np.int64)
    counts[:30] = np.minimum(rng.zipf(1.6, 30), 40)
    n, v = growth_curve(counts, points=15)
    assert n[0] == 1 and v[0] == pytest.approx(1.0)
    assert n[-1] == counts.sum() and v[-1] == pytest.approx(30.0)
    assert np.all(np.diff(v) > 0)
    tokens = np.repeat(np.arange(60), counts)
    sims = np.mean([_first_seen_curve(rng.permutation(tokens), n) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(v, sims, rtol=0.03, atol=0.1)


def test_heaps_fit_recovers_k_and_beta():
    n = np.geomspace(1, 1e6, 40)
    fit = heaps_fit(n, 12.5 * n**0.55)
    assert fit["K"] == pytest.approx(12.5, rel=1e-6)
    assert fit["beta"] == pytest.approx(0.55, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0)


def test_coverage_levels():
    counts = np.array([0, 50, 30, 0, 10, 5, 4, 1])  # 100 tokens
    levels = coverage_levels(counts)
    assert levels["50%"] == 1
    assert levels["90%"] == 3
    assert levels["95%"] == 4
    assert levels["99%"] == 5
    assert levels["100%"] == 6
    report = growth_report(counts)
    assert report["curve"]["distinct_ids"][-1] == pytest.approx(6.0)


def test_split_overlap_against_train():
    splits = {
        "test.txt": np.array([3, 0, 1, 0, 2]),
        "train.txt": np.array([1, 1, 0, 4, 0]),
    }
    o = split_overlap(splits)
    assert o["reference"] == "train.txt"  # named train, though listed second
    t = o["splits"]["test.txt"]
    assert t["ids_in_both"] == 1
    assert t["ids_only_here"] == 2  # ids 2 and 4
    assert t["ids_only_in_reference"] == 2  # ids 1 and 3
    assert t["tokens_only_here"] == 3
    assert t["tokens_only_here_fraction"] == pytest.approx(0.5)
    assert split_overlap({"only": np.ones(3)}) == {}


def test_memory_breakdown_sums_to_bytes_per_param():
    b = ParamBudget(vocab_size=1000, kept=100, hidden=8, model_params=10_000, vocab_params=8000)
    assert b.floor_params == b.pruned_params == 10_000 - 8000 + 800
    for regime, per in BYTES_PER_PARAM.items():
        table = b.breakdown(regime)
        for which, n in b.params().items():
            row = table[which]
            assert row["total"] == n * per
            assert row["weights"] + row["grads"] + row["optimizer"] == row["total"]
        assert b.bytes(regime) == {k: v["total"] for k, v in table.items()}


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("splits")
    (d / "train.txt").write_text(
        "the cat sat on the mat\nthe dog sat on the log\na bird sang\n", encoding="utf-8"
    )
    (d / "test.txt").write_text("the cat sang opera\nzebras sat\n", encoding="utf-8")
    (d / "pairs.jsonl").write_text(
        json.dumps({"a": "the cat", "b": "a dog barked"})
        + "\n"
        + json.dumps({"a": "rain fell", "b": "the cat"})
        + "\n",
        encoding="utf-8",
    )
    return d


def test_cli_report_splits_overlap_growth_and_plot(split_files, tmp_path, capsys):
    png = tmp_path / "curves.png"
    code = main(
        [
            "analyze",
            "--data",
            str(split_files / "train.txt"),
            "--data",
            str(split_files / "test.txt"),
            "--plot",
            str(png),
            "--json",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert report["plot_file"] == str(png)
    growth = report["growth"]
    assert growth["heaps_K"] > 0 and 0 < growth["heaps_beta"] <= 1.2
    assert growth["curve"]["distinct_ids"][-1] == pytest.approx(report["ids_in_data"], abs=1e-6)
    train, test = str(split_files / "train.txt"), str(split_files / "test.txt")
    assert set(report["splits"]) == {train, test}
    o = report["overlap"]
    assert o["reference"] == train
    t = o["splits"][test]
    assert t["ids_only_here"] > 0  # "opera", "zebras" pieces are not in train
    assert t["ids_in_both"] + t["ids_only_here"] == report["splits"][test]["ids_used"]
    svg = tmp_path / "curves.svg"  # in text mode the report says where the files went
    argv = ["analyze", "--data", train, "--plot", str(svg), "--save-kept", str(tmp_path / "k.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"written to {svg}" in out and f"written to {tmp_path / 'k.json'}" in out
    assert "floor: the model without its embedding + the kept rows" in out
    m = report["memory"]["fp32_adamw"]
    assert m["bytes_per_param"] == {"weights": 4, "grads": 4, "optimizer": 8}
    assert m["full"]["total"] == report["fp32_adamw_bytes_full"]
    assert m["floor"]["total"] == report["floor_params"] * 16
    assert report["memory"]["adamw_8bit"]["pruned"]["total"] == report["pruned_model_params"] * 10


def test_text_report_and_columns(split_files, capsys):
    code = main(["analyze", "--data", str(split_files / "pairs.jsonl"), "--text-column", "a,b"])
    out, _ = capsys.readouterr()
    assert code == 0
    for text in (
        "Heaps' law fit",
        "ids covering tokens",
        "bytes/param",
        "fp32_adamw",
        "per column:",
        "ids used by every column",
    ):
        assert text in out, text
    code = main(
        ["analyze", "--data", str(split_files / "pairs.jsonl"), "--text-column", "a,b", "--json"]
    )
    report = json.loads(capsys.readouterr()[0])
    cols = report["columns"]
    assert set(cols) == {"a", "b"}
    # each column alone: [CLS] x [SEP]; "the cat" appears in both columns
    assert report["columns_ids_in_all"] >= 4  # [CLS], [SEP], "the", "cat"
    assert cols["a"]["ids_used"] <= report["ids_in_data"]
