"""Fuzzing the command line and the files it reads.

Hypothesis draws command lines (every option, odd values) and input files (truncated, empty,
binary, wrong columns, mixed types, huge lines, other encodings; kept vocabularies and export
manifests with wrong types, negative, huge or duplicated ids, missing keys), runs `vocabprune`
in-process, and checks every run: exit status 0 or 2, no traceback, the last line of stderr names
the problem, no file left behind that was not there before, no file it did not create changed
(checksums of the whole test tree and the model before and after), and --out either complete or
absent. Outputs also go to inputs, the folder holding them and the model folder (always refused),
to a full and a read-only filesystem (a small tmpfs, where one can be mounted), and two runs
write one --out at once.

`make test` runs a bounded number of examples (derandomized, reproducible); `make fuzz` runs many
more (VOCABPRUNE_FUZZ_EXAMPLES, random seeds) and writes its counts to VOCABPRUNE_FUZZ_REPORT.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vocabprune as vp
from vocabprune.cli.main import main

EXAMPLES = int(os.environ.get("VOCABPRUNE_FUZZ_EXAMPLES", "30"))
LONG_RUN = "VOCABPRUNE_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
STATS: dict[str, int] = {"runs": 0, "exit_0": 0, "exit_2": 0, "tracebacks": 0, "leftovers": 0}

WORDS = ("markets", "fell", "sharply", "the", "match", "ended", "in", "a", "draw", "shares")


# -- the model every run uses: a tiny BERT with the real MiniLM tokenizer -----------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_tokenizer):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(minilm_tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    data = json.loads(config_file.read_text())
    data["model_max_length"] = 64
    config_file.write_text(json.dumps(data))
    return folder


# -- input files --------------------------------------------------------------------------------


def _rows(n: int, labels: bool = True) -> list[dict]:
    return [
        {"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(5)), "label": f"l{i % 2}"}
        if labels
        else {"text": " ".join(WORDS[i % len(WORDS)] for _ in range(3))}
        for i in range(n)
    ]


def _jsonl(rows: list) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def _csv(rows: list[dict], sep: str = ",") -> bytes:
    keys = list(rows[0]) if rows else ["text"]
    lines = [sep.join(keys)] + [sep.join(str(r.get(k, "")) for k in keys) for r in rows]
    return "\n".join(lines).encode()


def _parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


DATA_FILES = st.one_of(
    st.builds(lambda n: (".jsonl", _jsonl(_rows(n))), st.integers(2, 12)),
    st.builds(
        lambda n: (".txt", "\n".join(r["text"] for r in _rows(n)).encode()), st.integers(1, 12)
    ),
    st.builds(lambda n: (".csv", _csv(_rows(n))), st.integers(2, 12)),
    st.builds(lambda n: (".tsv", _csv(_rows(n), "\t")), st.integers(2, 12)),
    st.builds(lambda n: (".json", json.dumps(_rows(n)).encode()), st.integers(2, 12)),
    st.builds(lambda n: (".parquet", _parquet(_rows(n))), st.integers(2, 12)),
    st.sampled_from([".txt", ".jsonl", ".csv", ".json", ".parquet"]).map(lambda s: (s, b"")),
    st.tuples(
        st.sampled_from([".txt", ".jsonl", ".csv", ".parquet"]), st.binary(min_size=1, max_size=300)
    ),
    st.builds(lambda cut: (".jsonl", _jsonl(_rows(6))[:cut]), st.integers(1, 200)),
    st.builds(lambda cut: (".parquet", _parquet(_rows(6))[:cut]), st.integers(1, 400)),
    st.just((".jsonl", _jsonl([{"body": "no text column", "label": 1}] * 3))),
    st.just((".jsonl", _jsonl([{"text": 5, "label": 1}, {"text": None}, {"text": ["a"]}]))),
    st.just((".jsonl", _jsonl([1, 2, 3]))),
    st.just((".json", b'{"text": "not a list"}')),
    st.just((".txt", ("word " * 30_000).encode())),  # one huge line
    st.just((".txt", "\n".join(r["text"] for r in _rows(4)).encode("utf-16"))),
    st.just((".txt", "caf\u00e9 na\u00efve r\u00e9sum\u00e9\n".encode("latin-1") * 3)),
    st.just((".csv", b"text,label\nmarkets fell,a,extra\nshares rose,b\n")),
    st.just((".csv", b'text,label\n"unterminated,a\n')),
    st.just((".data", b"unknown suffix")),
)

KEPT_FILES = st.one_of(
    st.just(b"not json"),
    st.just(b"[]"),
    st.builds(
        lambda ids, size, fmt: json.dumps(
            {
                "format": fmt,
                "version": 1,
                "vocab_size": size,
                "kept_ids": ids,
                "counts": [1] * len(ids),
            }
        ).encode(),
        st.lists(st.one_of(st.integers(-5, 40_000), st.text(max_size=3)), max_size=6),
        st.one_of(st.integers(-1, 10**13), st.just("x"), st.none()),
        st.sampled_from(["vocabprune.kept_vocab", "other"]),
    ),
    st.builds(
        lambda drop: json.dumps(
            {
                k: v
                for k, v in {
                    "format": "vocabprune.kept_vocab",
                    "version": 1,
                    "vocab_size": 30522,
                    "kept_ids": [0, 100, 101, 102, 103],
                    "counts": [1] * 5,
                }.items()
                if k != drop
            }
        ).encode(),
        st.sampled_from(["kept_ids", "counts", "vocab_size", "version", "nothing"]),
    ),
)


# -- command lines ------------------------------------------------------------------------------


def _paths(tmp: Path, *more: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            str(tmp / "new.out"),
            str(tmp / "missing" / "deep" / "x.out"),
            str(tmp / "data0"),
            str(tmp / "adir"),
            str(tmp / "afile"),
            str(tmp / "link"),
            str(tmp),  # the folder holding every input
            "",
            *more,
        ]
    )


NUMBERS = st.one_of(
    st.integers(-3, 6), st.just(2**40), st.floats(allow_nan=True, allow_infinity=True)
)
TEXTS = st.one_of(
    st.text(max_size=8), st.sampled_from(["text", "body", "text,label", ",", "a,b,c"])
)


def _options(command: str, tmp: Path) -> st.SearchStrategy[list[str]]:
    common = {
        "--max-length": st.one_of(st.integers(-3, 80), st.just("none"), TEXTS),
        "--text-column": TEXTS,
    }
    per = {
        "analyze": {
            "--min-count": NUMBERS,
            "--save-kept": _paths(tmp).map(lambda p: p and p + ".json"),
            "--save-counts": st.sampled_from([".npy", ".safetensors", ".txt"]).map(
                lambda s: str(tmp / f"counts{s}")
            ),
            "--plot": st.sampled_from([".png", ".svg", ".pdf", ".jpg", ""]).map(
                lambda s: str(tmp / f"plot{s}")
            ),
            "--overwrite": None,
            "--json": None,
        },
        "prune": {
            "--min-count": NUMBERS,
            "--target-size": NUMBERS,
            "--unknown": st.sampled_from(["error", "unk", "grow", "bogus"]),
            "--standalone": None,
            "--overwrite": None,
            "--kept": st.just(str(tmp / "kept.json")),
            "--json": None,
        },
        "finetune": {
            "--max-steps": st.integers(-2, 2),
            "--epochs": st.one_of(st.floats(-1, 1), st.just(float("nan"))),
            "--batch-size": st.integers(-1, 4),
            "--lr": st.one_of(st.floats(-1, 1e-2), st.just(float("inf"))),
            "--weight-decay": NUMBERS,
            "--seed": st.one_of(st.integers(-2, 5), st.just(2**40)),
            "--eval-fraction": st.floats(-0.5, 1.5),
            "--limit": st.integers(-1, 12),
            "--label-column": TEXTS,
            "--eval-data": st.just(str(tmp / "data0")),
            "--kept": st.just(str(tmp / "kept.json")),
            "--no-prune": None,
            "--overwrite": None,
            "--json": None,
        },
    }[command]
    table = {**common, **per}

    @st.composite
    def draw(data: st.DrawFn) -> list[str]:
        argv: list[str] = []
        for flag in data(st.lists(st.sampled_from(sorted(table)), max_size=4, unique=True)):
            values = table[flag]
            argv.append(flag)
            if values is not None:
                argv.append(str(data(values)))
        return argv

    return draw()


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _checksums(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (links: where they point)."""
    sums = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_symlink():
                sums[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                sums[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def _changed(before: dict[str, str], after: dict[str, str], argv: list[str], code: int) -> list:
    """Files that were there before and changed or went, other than outputs of a run that
    succeeded with --overwrite."""
    mine: list[Path] = []
    if code == 0:
        for i, flag in enumerate(argv[:-1]):
            if flag in ("--out", "--save-kept", "--plot", "--save-counts") and argv[i + 1]:
                mine.append(Path(argv[i + 1]).resolve())
    changed = []
    for name, digest in before.items():
        path = Path(name).resolve()
        if any(path == m or m in path.parents or Path(f"{m}.json") == path for m in mine):
            continue
        if after.get(name) != digest:
            changed.append(name)
    return changed


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        except BaseException:
            STATS["tracebacks"] += 1
            raise AssertionError(f"vocabprune {argv} raised:\n{traceback.format_exc()}") from None
    return code, out.getvalue(), err.getvalue()


def _check(command: str, argv: list[str], code: int, err: str, before: set[str], root: Path):
    STATS["runs"] += 1
    STATS[f"exit_{code}"] = STATS.get(f"exit_{code}", 0) + 1
    assert code in (0, 2), (argv, code, err[-500:])
    assert "Traceback" not in err, (argv, err[-2000:])
    if code == 2:
        last = [line for line in err.splitlines() if line.strip()][-1]
        assert last.startswith("vocabprune: error: ") and len(last) > 25, (argv, err[-500:])
    new = _listing(root) - before
    outputs = [
        argv[i + 1]
        for i, a in enumerate(argv[:-1])
        if a in ("--out", "--save-kept", "--plot", "--save-counts")
    ]
    allowed = set()
    if code == 0:
        for out in outputs:
            rel = Path(out).resolve().relative_to(root.resolve()) if out else None
            if rel is not None:
                allowed |= {str(rel)} | {str(p) for p in rel.parents if str(p) != "."}
                allowed |= {p for p in new if p.startswith(f"{rel}/")}
                allowed |= {f"{rel}.json"}  # a .npy count file's metadata
    leftovers = {p for p in new if p not in allowed}
    if leftovers:
        STATS["leftovers"] += 1
    assert not leftovers, (argv, code, sorted(leftovers)[:5], err[-500:])
    if command in ("finetune", "prune") and "--out" in argv:
        out = Path(argv[argv.index("--out") + 1])
        if code == 0:
            assert (out / "config.json").is_file() and (out / "kept_vocab.json").is_file()


@FUZZ
@given(
    command=st.sampled_from(["analyze", "analyze", "prune", "finetune"]),
    files=st.lists(DATA_FILES, min_size=1, max_size=2),
    kept_file=KEPT_FILES,
    data=st.data(),
)
def test_fuzz_command_lines_and_files(tiny, command, files, kept_file, data):
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        (root / "adir").mkdir()
        (root / "afile").write_text("a plain file")
        (root / "kept.json").write_bytes(kept_file)
        paths = []
        for i, (suffix, content) in enumerate(files):
            path = root / f"data{i}{suffix}"
            path.write_bytes(content)
            paths.append(str(path))
        (root / "data0").write_bytes(files[0][1])  # no suffix: another odd input
        (root / "link").symlink_to(root / "afile")
        argv = [command, "--model", str(tiny), "--data", *paths]
        if command in ("finetune", "prune"):
            argv += ["--out", data.draw(_paths(root, str(tiny), *paths), label="out")]
        if command == "finetune":
            argv += ["--max-steps", "1", "--batch-size", "2"]
        argv += data.draw(_options(command, root), label="options")
        before, sums = _listing(root), _checksums(root, tiny)
        code, _, err = _run(argv)
        _check(command, argv, code, err, before, root)
        changed = _changed(sums, _checksums(root, tiny), argv, code)
        assert not changed, (argv, code, changed[:5], err[-500:])


# -- full and read-only filesystems, concurrent runs -------------------------------------------


@pytest.fixture(scope="module")
def small_fs(tmp_path_factory):
    """A 256 KiB tmpfs (full after one count file) and a read-only one; skipped where this
    process cannot mount (mount needs root)."""
    root = tmp_path_factory.mktemp("fs")
    mounted = []
    for name, options in (("full", "size=256k"), ("ro", "size=64k,ro")):
        (root / name).mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(root / name)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            for path in mounted:
                subprocess.run(["umount", str(path)], check=False)
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(root / name)
    yield root
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


@FUZZ
@given(
    command=st.sampled_from(["analyze", "prune"]),
    where=st.sampled_from(["full", "ro"]),
    flag=st.sampled_from(["--save-kept", "--save-counts", "--plot", "--out"]),
    name=st.sampled_from(["o.json", "o.npy", "o.safetensors", "o.png", "o.svg", "sub/o"]),
    fill=st.integers(0, 250),
)
def test_fuzz_full_and_read_only_filesystems(tiny, small_fs, command, where, flag, name, fill):
    """Out of space (after `fill` KiB of other files) or read-only: exit 0 or 2 with one line,
    nothing left behind, the other files intact."""
    folder = small_fs / where
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d.txt"
        data.write_text("\n".join(r["text"] for r in _rows(8)))
        ballast = folder / "ballast"
        if where == "full":
            with contextlib.suppress(OSError):
                ballast.write_bytes(b"x" * fill * 1024)
        before, sums = _listing(folder), _checksums(folder, tiny, Path(tmp))
        if command == "prune" or flag == "--out":
            argv = ["prune", "--model", str(tiny), "--data", str(data), "--out", str(folder / name)]
        else:
            argv = [command, "--model", str(tiny), "--data", str(data), flag, str(folder / name)]
        code, _, err = _run(argv)
        _check(argv[0], argv, code, err, before, folder)
        assert not _changed(sums, _checksums(folder, tiny, Path(tmp)), argv, code)
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                import shutil

                shutil.rmtree(path)
            else:
                path.unlink()


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_runs_writing_one_out_at_once(tiny, tmp_path, overwrite):
    """Both run to the end at the same time: each exits 0 or 2 (naming the folder), at least one
    wins, without --overwrite exactly one; the folder is one complete output; nothing else."""
    data = tmp_path / "d.txt"
    data.write_text("\n".join(r["text"] for r in _rows(8)))
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "vocabprune", "prune", "--model", str(tiny)]
    argv += ["--data", str(data), "--out", str(out)] + (["--overwrite"] if overwrite else [])
    sums = _checksums(tiny, tmp_path)
    procs = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 2], [0, 0] if overwrite else [0, 2]), results
    for code, err in results:
        assert "Traceback" not in err
        if code == 2:
            assert str(out) in err.strip().splitlines()[-1], err[-500:]
    assert (out / "config.json").is_file() and (out / "kept_vocab.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.txt", "o"]
    after = _checksums(tiny, tmp_path)
    assert not [n for n in sums if not Path(n).is_relative_to(out) and after.get(n) != sums[n]]


# -- exports and kept vocabularies read through the Python API ---------------------------------


@pytest.fixture(scope="module")
def export(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "compact"
    data = tmp_path_factory.mktemp("export-data") / "d.txt"
    data.write_text("\n".join(r["text"] for r in _rows(8)))
    assert main(["prune", "--model", str(tiny), "--data", str(data), "--out", str(folder)]) == 0
    return folder


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


@FUZZ
@given(
    target=st.sampled_from(["vocabprune_export.json", "kept_vocab.json", "config.json"]),
    key=st.text(max_size=12),
    value=JSON_VALUES,
    drop=st.booleans(),
)
def test_fuzz_export_files(export, target, key, value, drop):
    """A corrupt manifest, kept vocabulary or config: load_compact raises VocabPruneError (one
    line) or loads; nothing else."""
    import shutil

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name) / "compact"
        shutil.copytree(export, folder)
        path = folder / target
        content = json.loads(path.read_text())
        keys = sorted(content)
        if keys and (drop or not key):
            content.pop(keys[hash(key) % len(keys)])
        else:
            content[key if key else keys[0]] = value
        path.write_text(json.dumps(content))
        STATS["runs"] += 1
        try:
            vp.load_compact(folder)
        except vp.VocabPruneError as exc:
            assert "\n" not in str(exc)
        except Exception:
            STATS["tracebacks"] += 1
            raise


@FUZZ
@given(kept_file=KEPT_FILES)
def test_fuzz_kept_vocabulary_files(kept_file):
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "kept.json"
        path.write_bytes(kept_file)
        STATS["runs"] += 1
        try:
            vp.KeptVocab.load(path)
        except vp.VocabPruneError as exc:
            assert "\n" not in str(exc)
        except Exception:
            STATS["tracebacks"] += 1
            raise


def teardown_module(module):
    report = os.environ.get("VOCABPRUNE_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps({**STATS, "examples_per_test": EXAMPLES}, indent=2))
