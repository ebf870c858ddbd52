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


# -- one rule for every command, one line for every bad value -------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyze", "--max-length", "-5"], "--max-length must be a whole number >= 2, not -5"),
        (["analyze", "--max-length", "0"], "--max-length must be a whole number >= 2, not 0"),
        (["prune", "--out", "{tmp}/o", "--max-length", "0"], "--max-length must be a whole number"),
        (
            ["finetune", "--out", "{tmp}/o", "--max-length", "1"],
            "--max-length must be a whole number",
        ),
        (["finetune", "--out", "{tmp}/o", "--batch-size", "0"], "--batch-size must be"),
        (["finetune", "--out", "{tmp}/o", "--batch-size", "-3"], "--batch-size must be"),
        (["finetune", "--out", "{tmp}/o", "--lr", "-1"], "--lr must be a finite number > 0"),
        (["finetune", "--out", "{tmp}/o", "--lr", "nan"], "--lr must be a finite number > 0"),
        (["analyze", "--plot", "{tmp}/adir"], "is a folder"),
        (["analyze", "--plot", "{tmp}/x.jpg"], "unknown figure format"),
        (["analyze", "--max-length", "abc"], "--max-length: must be a whole number"),
        (["analyze", "--data", "{tmp}/bin.txt"], "bin.txt is not text"),
        (["analyze", "--data", "{tmp}/bad.jsonl"], "bad.jsonl: line 2 is not valid JSON"),
        (["analyze", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_values_are_one_line_with_status_2(capsys, tmp_path, argv, message):
    (tmp_path / "adir").mkdir()
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken}\n')
    before = sorted(tmp_path.iterdir())
    try:
        code, out, err = _run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    except SystemExit as exc:  # argparse's own refusals exit from parse_args
        code, (out, err) = exc.code, capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocabprune: error: "), err
    assert message in lines[0]
    assert sorted(tmp_path.iterdir()) == before


def test_every_option_has_help_and_its_default():
    from vocabprune.cli.parser import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help text"
            shown = formatter._get_help_string(action)
            if (
                action.default not in (None, [], False)
                and action.option_strings
                and action.nargs != 0
            ):
                assert "default" in shown, f"{name} {action.option_strings}: default not shown"
    ft = sub.choices["finetune"].format_help()
    assert "--max-length N" in ft and "(default: 128)" in ft
    analyze = sub.choices["analyze"].format_help()
    assert "--task" in analyze and "(default: 128)" in analyze  # finetune's length and tasks
    assert "causal-lm" not in sub.choices["prune"].format_help()  # prune has no --task


def test_python_dash_m_and_several_data_paths(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("markets fell sharply\n")
    b.write_text("the match ended in a draw\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vocabprune", "analyze", "--data", str(a), str(b), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert list(report["splits"]) == [str(a), str(b)]
    assert report["examples"] == 2


def test_datasets_folders_and_arrow_files_are_data(capsys, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["markets fell sharply", "the match ended"], "label": [0, 1]}
    whole = datasets.Dataset.from_dict(rows)
    whole.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": whole, "test": whole.select([0])}).save_to_disk(
        str(tmp_path / "dd")
    )
    arrow = next((tmp_path / "one").glob("*.arrow"))
    for data, examples in ((tmp_path / "one", 2), (arrow, 2), (tmp_path / "dd", 2)):
        code, out, err = _run(capsys, "analyze", "--data", str(data), "--json")
        assert code == 0, err
        assert json.loads(out)["examples"] == examples
    code, out, err = _run(capsys, "analyze", "--data", f"{tmp_path / 'dd'}@test", "--json")
    assert code == 0 and json.loads(out)["examples"] == 1, err
    code, _, err = _run(capsys, "analyze", "--data", f"{tmp_path / 'dd'}@dev")
    assert code == 2 and "holds the splits train, test" in err


def test_eval_data_is_used_as_given(capsys, tmp_path):
    train, held = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    rows = [{"text": f"stock market report {i}", "label": "business"} for i in range(8)]
    rows += [{"text": f"football match report {i}", "label": "sport"} for i in range(8)]
    train.write_text("\n".join(json.dumps(r) for r in rows))
    held.write_text("\n".join(json.dumps(r) for r in rows[:3] + rows[-2:]))
    argv = [
        "finetune",
        "--data",
        str(train),
        "--eval-data",
        str(held),
        "--out",
        str(tmp_path / "o"),
    ]
    code, out, err = _run(capsys, *argv, "--max-steps", "2", "--batch-size", "4", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["train_examples"] == 16 and report["eval_examples"] == 5


def test_masked_lm_without_a_trained_head_warns(capsys, tmp_path, minilm_dir):
    argv = ["finetune", "--task", "masked-lm", "--out", str(tmp_path / "mlm"), "--limit", "8"]
    code, _, err = _run(capsys, *argv, "--max-steps", "1", "--batch-size", "4", "--json")
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("vocabprune: warning:")]
    assert warning and "no trained masked-lm head" in warning[0]


def test_overwrite_refuses_a_plain_file_it_did_not_write(capsys, tmp_path):
    target = tmp_path / "out"
    target.write_text("a file in the way")
    data = tmp_path / "d.txt"
    data.write_text("markets fell sharply\nthe match ended\n")
    code, _, err = _run(capsys, "prune", "--data", str(data), "--out", str(target), "--overwrite")
    assert code == 2 and "is a file, not a folder" in err
    assert target.read_text() == "a file in the way"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.txt", "out"]


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"])
def test_an_interrupted_finetune_leaves_nothing_behind(tmp_path, signum):
    import signal
    import time

    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vocabprune", "finetune", "--out", str(out), "--limit", "400"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored, and Python keeps it so (as it
        # should); the child of this test gets the default, as at a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and not any("trainer" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.2)  # until the Trainer's scratch folder exists: training has started
    assert any("trainer" in p.name for p in tmp_path.iterdir()), "training never started"
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=240)
    number = getattr(signal, signum)
    # 128 + the signal, as main returns it; or, rarely, death by SIGINT itself: CPython re-raises
    # SIGINT at exit when a KeyboardInterrupt passed through code it ran on its own (its own
    # convention; a shell reports 130 either way). Either way the clean-up below has run.
    assert proc.returncode in (128 + number, -number), err[-1000:]
    assert f"interrupted ({signum})" in err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_leaves_only_a_named_temporary_that_the_next_run_removes(capsys, tmp_path):
    import signal

    # a writer killed outright (kill -9) while its scratch folder existed: its lock is free
    child = (
        "import os, pathlib, signal, sys; from vocabprune.core.files import Claim; "
        "c = Claim(pathlib.Path(sys.argv[1]) / 'o'); p = c.path('trainer-', ''); p.mkdir(); "
        "(p / 'partial').write_text('left by kill -9'); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(tmp_path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if "trainer" in p.name]
    assert len(stale) == 1 and (stale[0] / "partial").is_file()
    data = tmp_path / "d.txt"
    data.write_text("markets fell sharply\n")
    code, _, err = _run(capsys, "prune", "--data", str(data), "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.txt", "o"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "--out", "{tmp}/o", "--lr", "-1"], "--lr must be a finite number > 0"),
        (["analyze", "--data", "{tmp}/missing.txt"], "data not found"),
        (["prune", "--out", "{tmp}/o", "--model", "{tmp}/nope"], "model folder not found"),
        (["finetune", "--out", "{tmp}/o", "--kept", "{tmp}/k.json"], "--kept {tmp}/k.json: not"),
        (["finetune", "--out", "{tmp}/o", "--eval-data", "{tmp}/e.txt"], "data not found"),
    ],
)
def test_option_and_path_errors_come_before_the_heavy_imports(tmp_path, argv, message):
    """A wrong flag or path fails at once: neither torch nor transformers is imported."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (
        "import sys\nfrom vocabprune.cli.main import main\n"
        f"rc = main({argv!r})\nprint(rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr
    assert message.replace("{tmp}", str(tmp_path)) in proc.stderr


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_interrupt_a_library_turns_into_its_own_error_still_ends_as_interrupted(
    monkeypatch, capsys, signame
):
    """transformers' lazy imports re-raise an interrupt that lands inside them as
    ModuleNotFoundError; the run still ends as interrupted (128 + the signal, one line), Ctrl-C
    included (make test once caught SIGINT landing on `from transformers import Trainer`)."""
    import os
    import signal
    import time

    from vocabprune.cli import main as cli

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default here (an ignoring parent)")

    def command(args):
        try:
            os.kill(os.getpid(), getattr(signal, signame))
            time.sleep(5)  # the handler raises in here
        except KeyboardInterrupt as exc:  # what transformers' _LazyModule does with it
            raise ModuleNotFoundError("Could not import module 'Trainer'") from exc
        return {}

    monkeypatch.setitem(cli.COMMANDS, "analyze", command)
    assert main(["analyze"]) == 128 + getattr(signal, signame)
    assert f"interrupted ({signame})" in capsys.readouterr().err
