"""Never lose a user's file, never a silently wrong run (issue 20): the rules of core/files.py
for every output, the input checks, stdout purity and checkpoints complete or absent."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vocabprune.cli.main import main
from vocabprune.core.files import (
    Claim,
    OutputError,
    atomic_dir,
    atomic_file,
    clean_stale,
    output_rules,
)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("vocabprune: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("markets fell sharply\nthe match ended in a draw\n")
    return path


# -- links, inputs, overwrite -------------------------------------------------------------------


def test_a_link_is_refused_never_replaced(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("precious")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(OutputError, match="symbolic link"), atomic_file(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_save_kept_to_dev_stdout_is_refused(capsys, data):
    code, _, err = _run(capsys, "analyze", "--data", data, "--save-kept", "/dev/stdout")
    assert code == 2 and "symbolic link" in _error(err)
    assert Path("/dev/stdout").is_symlink()


def test_an_input_is_never_an_output_even_with_overwrite(tmp_path, data):
    model = tmp_path / "model"
    model.mkdir()
    (model / "vocabprune_export.json").write_text("{}")  # even one that looks like ours
    for out, source in ((model, model), (data, data), (tmp_path, data)):
        with (
            output_rules(overwrite=True, inputs=[source]),
            pytest.raises(OutputError, match="input of this run"),
            atomic_dir(out) as tmp,
        ):
            (tmp / "x").write_text("x")
    assert data.read_text().startswith("markets")
    assert sorted(p.name for p in model.iterdir()) == ["vocabprune_export.json"]


def test_prune_out_equal_to_model_refused_before_work(capsys, tmp_path, minilm_dir, data):
    model = tmp_path / "m"
    shutil.copytree(minilm_dir, model, ignore=shutil.ignore_patterns("*.onnx", "onnx"))
    before = sorted(p.name for p in model.rglob("*"))
    argv = ["prune", "--model", model, "--data", data, "--out", model, "--overwrite"]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "input of this run" in _error(err)
    assert sorted(p.name for p in model.rglob("*")) == before


def test_out_onto_a_data_file_or_its_folder_refused(capsys, tmp_path, data):
    for out in (data, tmp_path):
        code, _, err = _run(capsys, "prune", "--data", data, "--out", out, "--overwrite")
        assert code == 2 and "input of this run" in _error(err)
    assert data.read_text().startswith("markets")


def test_overwrite_refuses_a_folder_of_unrelated_files_naming_one(capsys, tmp_path, data):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not ours")
    code, _, err = _run(capsys, "prune", "--data", data, "--out", out, "--overwrite")
    assert code == 2 and "holiday.jpg" in _error(err) and "not written by vocabprune" in err
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8 not ours"


def test_overwrite_replaces_vocabprune_outputs_and_empty_folders(tmp_path):
    out = tmp_path / "o"
    for _ in range(2):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "vocabprune_run.json").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty, overwrite=True) as tmp:
        (tmp / "vocabprune_run.json").write_text("{}")
    assert (empty / "vocabprune_run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "o"]


def test_out_dot_is_refused(capsys, tmp_path, data, monkeypatch):
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    code, _, err = _run(capsys, "prune", "--data", data, "--out", ".", "--overwrite")
    assert code == 2 and "current folder" in _error(err)


def test_checkpoint_dir_equal_to_out_refused(capsys, tmp_path, data):
    argv = ["finetune", "--data", data, "--out", tmp_path / "o", "--save-steps", "1"]
    code, _, err = _run(capsys, *argv, "--checkpoint-dir", tmp_path / "o")
    assert code == 2 and "--checkpoint-dir" in _error(err)
    code, _, err = _run(capsys, *argv, "--checkpoint-dir", tmp_path / "o" / "ck")
    assert code == 2 and "separate folders" in _error(err)


def test_analyze_outputs_are_never_replaced_without_overwrite(capsys, tmp_path, data):
    kept, counts, plot = tmp_path / "k.json", tmp_path / "c.npy", tmp_path / "p.png"
    for path in (kept, counts, Path(f"{counts}.json"), plot):
        path.write_text("user data")
        argv = ["analyze", "--data", data, "--save-kept", kept, "--save-counts", counts]
        code, _, err = _run(capsys, *argv, "--plot", plot)
        assert code == 2 and "already exists" in _error(err)
        assert path.read_text() == "user data"
        path.unlink()


def test_analyze_overwrite_replaces_its_own_files_only(capsys, tmp_path, data, minilm_dir):
    kept, counts, plot = tmp_path / "k.json", tmp_path / "c.npy", tmp_path / "p.svg"
    argv = ["analyze", "--data", data, "--save-kept", kept, "--save-counts", counts]
    argv += ["--plot", plot]
    assert _run(capsys, *argv)[0] == 0
    code, _, err = _run(capsys, *argv, "--overwrite")
    assert code == 0, err
    config = tmp_path / "config.json"
    shutil.copy(Path(minilm_dir) / "config.json", config)
    code, _, err = _run(capsys, "analyze", "--data", data, "--save-kept", config, "--overwrite")
    assert code == 2 and "not written by vocabprune" in _error(err)
    assert config.read_bytes() == (Path(minilm_dir) / "config.json").read_bytes()


def test_merge_counts_does_not_replace_an_existing_sidecar(capsys, tmp_path, data):
    counts = tmp_path / "a.npy"
    assert _run(capsys, "analyze", "--data", data, "--save-counts", counts)[0] == 0
    sidecar = tmp_path / "m.npy.json"
    sidecar.write_text("user data")
    code, _, err = _run(capsys, "merge-counts", counts, "--out", tmp_path / "m.npy")
    assert code == 2 and "m.npy.json" in _error(err)
    assert sidecar.read_text() == "user data"


# -- the final rename, concurrent runs, stale temporaries ----------------------------------------


def test_an_output_that_appears_meanwhile_is_never_replaced(tmp_path):
    out = tmp_path / "o"
    for overwrite in (False, True):
        with (
            pytest.raises(OutputError, match="appeared while this run worked"),
            atomic_dir(out, overwrite=overwrite) as tmp,
        ):
            (tmp / "vocabprune_run.json").write_text("mine")
            out.mkdir()
            (out / "vocabprune_run.json").write_text("theirs")
        assert (out / "vocabprune_run.json").read_text() == "theirs"
        shutil.rmtree(out)
    assert list(tmp_path.iterdir()) == []


_WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    from vocabprune.core.files import atomic_dir
    from vocabprune.core.errors import VocabPruneError
    sync = pathlib.Path(sys.argv[4])
    try:
        with atomic_dir(sys.argv[1], overwrite=sys.argv[2] == "1") as tmp:
            (tmp / "vocabprune_run.json").write_text(sys.argv[3])
            (sync / sys.argv[3]).touch()  # both runs are at work before either finishes
            while len(list(sync.iterdir())) < 2:
                time.sleep(0.05)
    except VocabPruneError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    """
)


@pytest.mark.parametrize("overwrite", ["0", "1"])
def test_two_concurrent_writers_one_wins_the_other_fails_naming_it(tmp_path, overwrite):
    out = tmp_path / "o"
    if overwrite == "1":
        out.mkdir()
        (out / "vocabprune_run.json").write_text("previous")
    sync = tmp_path.parent / f"{tmp_path.name}-sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(out), overwrite, name, str(sync)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert str(out) in loser and "appeared" in loser
    winner = "ab"[[code for code, _ in results].index(0)]
    assert (out / "vocabprune_run.json").read_text() == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    shutil.rmtree(sync)


_HOLDER = textwrap.dedent(
    """
    import pathlib, sys, time
    from vocabprune.core.files import Claim
    claim = Claim(pathlib.Path(sys.argv[1]) / "o")
    claim.path("trainer-", "").mkdir()
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _hold(folder: Path, *prefix: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_live_writers_temporary_is_kept_and_removed_once_it_is_gone(tmp_path):
    proc = _hold(tmp_path)
    try:
        assert clean_stale(tmp_path) == []
        assert any("trainer" in p.name for p in tmp_path.iterdir())
    finally:
        proc.kill()
        proc.wait()
    assert len(clean_stale(tmp_path)) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_writer_in_another_pid_namespace_keeps_its_temporary(tmp_path):
    """Its PID means nothing here (1 in its own namespace); its lock says it runs."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--pid", "--fork", "true"], check=False)
    if unshare is None or probe.returncode != 0:
        pytest.skip("cannot make a PID namespace here (unshare --pid needs root)")
    proc = _hold(tmp_path, unshare, "--pid", "--fork", "--kill-child")
    try:
        lock = next(p for p in tmp_path.iterdir() if p.name.endswith(".lock"))
        assert lock.read_text().split()[2] in ("1", "2")  # its PID in its own namespace
        assert clean_stale(tmp_path) == []
        assert any("trainer" in p.name for p in tmp_path.iterdir())
    finally:
        proc.kill()
        proc.wait()


def test_a_temporary_name_stays_short_enough(tmp_path):
    name = "k" * 240 + ".json"  # the longest name a filesystem takes, less a little
    with atomic_file(tmp_path / name) as tmp:
        tmp.write_text('{"format": "vocabprune.kept_vocab"}')
    assert (tmp_path / name).is_file()


# -- OS errors ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, *options: str):
    path.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, tmp_path, data):
    with _tmpfs(tmp_path / "full", "size=64k") as full:
        for flag, name in (("--save-counts", "c.npy"), ("--save-counts", "c.safetensors")):
            code, _, err = _run(capsys, "analyze", "--data", data, flag, full / name)
            assert code == 2 and "No space left on device" in _error(err), err
            assert "Traceback" not in err
            assert list(full.iterdir()) == []


def test_a_read_only_filesystem_is_one_line(capsys, tmp_path, data):
    with _tmpfs(tmp_path / "ro", "size=1m", "ro") as ro:
        code, _, err = _run(capsys, "analyze", "--data", data, "--save-kept", ro / "k.json")
        assert code == 2 and "Read-only file system" in _error(err)


def test_json_to_a_full_device_is_one_line(data):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "vocabprune", "analyze", "--data", str(data), "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert proc.returncode == 2 and "No space left on device" in _error(proc.stderr)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


# -- input checks -------------------------------------------------------------------------------


def _model_copy(minilm_dir: str | Path, folder: Path, names: list[str]) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(Path(minilm_dir) / name)
    return folder


def test_a_model_folder_without_tokenizer_is_refused(capsys, tmp_path, minilm_dir, data):
    model = _model_copy(minilm_dir, tmp_path / "m", ["config.json", "model.safetensors"])
    code, _, err = _run(capsys, "analyze", "--model", model, "--data", data)
    assert code == 2 and "no tokenizer files" in _error(err) and str(model) in err


def test_a_compact_export_passed_as_model_is_refused(capsys, tmp_path, data):
    out = tmp_path / "export"
    assert _run(capsys, "prune", "--data", data, "--out", out)[0] == 0
    code, _, err = _run(capsys, "analyze", "--model", out, "--data", data)
    assert code == 2 and "vocabprune prune" in _error(err)


@pytest.mark.parametrize("task", ["classification", "sentence-embedding"])
def test_weights_that_do_not_cover_the_model_are_refused(capsys, tmp_path, minilm_dir, task):
    import numpy as np
    from safetensors.numpy import save_file

    names = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    names += ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"]
    names += ["1_Pooling", "special_tokens_map.json"]
    names = [n for n in names if (Path(minilm_dir) / n).exists()]
    model = _model_copy(minilm_dir, tmp_path / "m", names)
    save_file({"unrelated.weight": np.zeros(4, dtype=np.float32)}, str(model / "model.safetensors"))
    rows = [
        {"text": f"report {i}", "label": i % 2, "a": f"title {i}", "b": f"body {i}"}
        for i in range(8)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["finetune", "--task", task, "--model", model, "--data", tmp_path / "d.jsonl"]
    argv += ["--out", tmp_path / "o", "--max-steps", "1"]
    if task == "sentence-embedding":
        argv += ["--text-column", "a,b"]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "lacks the model's weight" in _error(err) and str(model) in err
    assert not (tmp_path / "o").exists()


def test_eval_labels_training_never_saw_are_refused(capsys, tmp_path):
    train = [{"text": f"report {i}", "label": i % 4} for i in range(16)]
    held = [{"text": f"report {i}", "label": float(i % 4)} for i in range(4)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in train))
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(r) for r in held))
    argv = ["finetune", "--data", tmp_path / "t.jsonl", "--eval-data", tmp_path / "e.jsonl"]
    code, _, err = _run(capsys, *argv, "--out", tmp_path / "o", "--max-steps", "1")
    assert code == 2 and "never has" in _error(err) and "float" in err


# -- stdout, DeepSpeed ----------------------------------------------------------------------------


def test_json_is_the_only_thing_on_stdout_and_deepspeed_is_not_imported(tmp_path, data):
    probe = textwrap.dedent(
        """
        import sys
        from vocabprune.cli.main import main
        code = main(sys.argv[1:])
        print(f"deepspeed imported: {'deepspeed' in sys.modules}", file=sys.stderr)
        sys.exit(code)
        """
    )
    argv = ["prune", "--data", str(data), "--out", str(tmp_path / "o"), "--json"]
    proc = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # exactly one JSON document
    assert report["out"] == str(tmp_path / "o")
    assert "deepspeed imported: False" in proc.stderr


def test_what_other_libraries_print_goes_to_stderr(capfd, data, monkeypatch):
    import vocabprune.cli.main as cli

    real = cli.COMMANDS["analyze"]

    def noisy(args):
        print("a library talking on stdout")
        os.write(1, b"C code writing to fd 1\n")
        return real(args)

    monkeypatch.setitem(cli.COMMANDS, "analyze", noisy)
    assert main(["analyze", "--data", str(data), "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["examples"] == 2
    assert "a library talking" in err and "C code writing" in err


# -- checkpoints ----------------------------------------------------------------------------------


def test_resume_auto_takes_the_last_complete_checkpoint(tmp_path):
    from vocabprune.cli.steps import drop_partial_checkpoints, resume_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_text("x")
        if complete:
            (folder / "vocabprune.json").write_text("{}")
    assert resume_checkpoint("auto", tmp_path) == tmp_path / "checkpoint-4"
    drop_partial_checkpoints(tmp_path, before={tmp_path / "checkpoint-2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_claim_release_removes_its_temporaries_and_lock(tmp_path):
    claim = Claim(tmp_path / "out")
    claim.path("x-", "").mkdir()
    assert len(list(tmp_path.iterdir())) == 2
    claim.release()
    assert list(tmp_path.iterdir()) == []


# -- evaluation data the kept vocabulary must cover, checked when training starts ---------------


def test_an_evaluator_the_kept_vocabulary_misses_fails_before_training(bbc_texts, minilm_dir):
    import vocabprune as vp

    st = pytest.importorskip("sentence_transformers")
    datasets = pytest.importorskip("datasets")
    try:
        from sentence_transformers.sentence_transformer import evaluation, losses
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import evaluation, losses

    articles = [t for t in bbc_texts["text"] if "\n" in t][:40]
    titles = [a.split("\n", 1)[0].strip() for a in articles]
    bodies = [a.split("\n", 1)[1].strip()[:300] for a in articles]
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    vp.prune(model, vp.build_kept_vocab(model, titles[:8], bodies[:8]))  # the eval set unscanned
    evaluator = evaluation.InformationRetrievalEvaluator(
        {str(i): titles[i] for i in range(30, 40)},
        {str(i): bodies[i] for i in range(30, 40)},
        {str(i): {str(i)} for i in range(30, 40)},
    )
    args = st.SentenceTransformerTrainingArguments(
        output_dir="/nonexistent-never-written",
        max_steps=2,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        eval_strategy="steps",
        eval_steps=1,
        disable_tqdm=True,
    )
    trainer = st.SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"anchor": titles[:8], "positive": bodies[:8]}),
        loss=losses.MultipleNegativesRankingLoss(model),
        evaluator=evaluator,
        callbacks=[vp.VocabPruneCallback(evaluator)],
    )
    with pytest.raises(vp.UnknownTokenError, match="InformationRetrievalEvaluator"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_tokenized_eval_rows_and_texts_are_checked(minilm_dir, minilm_tokenizer):
    import torch
    from transformers import BertConfig, BertModel

    import vocabprune as vp
    from vocabprune.train.callback import check_covered

    model = BertModel(
        BertConfig(
            vocab_size=len(minilm_tokenizer),
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
        )
    )
    vp.prune(model, vp.build_kept_vocab(minilm_tokenizer, ["markets fell"], model=model))
    check_covered(model, [{"input_ids": minilm_tokenizer("markets fell")["input_ids"]}])
    rows = [{"input_ids": torch.tensor(minilm_tokenizer("markets rose")["input_ids"])}]
    with pytest.raises(vp.UnknownTokenError, match="'rose'"):
        check_covered(model, rows, tokenizer=minilm_tokenizer)
    with pytest.raises(vp.UnknownTokenError, match="'rose'"):
        check_covered(model, ["markets rose"], tokenizer=minilm_tokenizer)
