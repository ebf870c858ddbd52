"""The command line: the documented JSON contract and one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vocabprune.cli.main import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_default_max_length_128_json(capsys):
    code, out, _ = _run(capsys, "analyze", "--max-length", "128", "--json")
    assert code == 0
    report = json.loads(out)
    for key in (
        "vocab_size",
        "used_tokens",
        "total_tokens",
        "used_fraction",
        "embedding_params",
        "model_params",
        "pruned_model_params",
        "adamw_fp32_bytes_full",
        "adamw_fp32_bytes_pruned",
    ):
        assert key in report, key
    assert report["vocab_size"] == 30522
    assert report["ids_in_data"] in (13813, 13814, 13815)  # FIXTURES.md: about 13,813
    assert report["used_tokens"] == report["ids_in_data"] + 3  # + [PAD] [UNK] [MASK] unused
    assert report["embedding_params"] == 30522 * 384
    removed = (30522 - report["used_tokens"]) * 384
    assert report["pruned_model_params"] == report["model_params"] - removed
    assert report["adamw_fp32_bytes_pruned"] == 16 * report["pruned_model_params"]
    assert report["used_fraction"] == pytest.approx(report["used_tokens"] / 30522)


def test_analyze_table_and_saved_kept_vocab(capsys, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "markets fell sharply"}\n{"text": "the match ended"}\n')
    kept_file = tmp_path / "kept.json"
    code, out, _ = _run(capsys, "analyze", "--data", str(data), "--save-kept", str(kept_file))
    assert code == 0
    assert "ids kept (+specials)" in out and "pruned model params" in out
    saved = json.loads(kept_file.read_text())
    assert saved["vocab_size"] == 30522 and saved["size"] == 6 + 5  # 6 words + 5 specials


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyze", "--data", "{tmp}/missing.txt"], "data not found"),
        (["analyze", "--data", "{tmp}/empty.txt"], "empty"),
        (
            ["analyze", "--data", "{tmp}/d.jsonl", "--text-column", "body"],
            "text column 'body' not found",
        ),
        (
            ["finetune", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/o", "--label-column", "y"],
            "label column 'y' not found",
        ),
        (["finetune", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/exists"], "already exists"),
        (["analyze", "--model", "{tmp}/not_a_model_dir"], "not_a_model_dir"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, tmp_path, argv, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "d.jsonl").write_text('{"text": "a b", "label": 1}\n{"text": "c", "label": 0}\n')
    (tmp_path / "exists").mkdir()
    (tmp_path / "not_a_model_dir").mkdir()
    code, out, err = _run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocabprune: error:"), err
    assert message in lines[0]
    assert not (tmp_path / "o").exists()  # nothing written half-way


def test_finetune_json_through_the_real_entry_point(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"text": f"stock market report number {i}", "label": "business"} for i in range(12)]
    rows += [{"text": f"football match report number {i}", "label": "sport"} for i in range(12)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "model"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vocabprune",
            "finetune",
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--eval-fraction",
            "0.25",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout holds only the JSON object
    for key in (
        "pruned",
        "kept_tokens",
        "vocab_size",
        "trainable_params",
        "eval_accuracy",
        "train_seconds",
    ):
        assert key in report, key
    assert report["pruned"] is True and report["vocab_size"] == 30522
    assert report["kept_tokens"] < 30
    assert 0.0 <= report["eval_accuracy"] <= 1.0
    assert (out / "model.safetensors").is_file() and (out / "kept_vocab.json").is_file()
