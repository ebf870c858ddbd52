""".txt files are read streaming (data/sources.py TextCheck, TextLines): the same lines and the
same errors as reading the whole file (the rule before streaming, kept here as the oracle), with
memory for a chunk and a batch of lines, not for the file."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vocabprune.data.sources as sources
from vocabprune.core.errors import ScanError
from vocabprune.data.scan import count_texts, scan
from vocabprune.data.sources import TextLines, read_table, read_text_file

_CONTROLS = {c for c in range(32) if chr(c) not in "\t\n\r\f\v"} | set(range(0x7F, 0xA0))
_DROP = dict.fromkeys(_CONTROLS)


def whole_file_lines(path) -> list[str]:
    """The rule before streaming: the whole file decoded, checked on its characters, split."""
    data = path.read_bytes()
    if b"\x00" in data:
        raise ScanError(f"{path} is not text (it holds NUL bytes: binary data, or UTF-16/32)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    control = len(text) - len(text.translate(_DROP))
    if text and control > 0.01 * len(text):
        raise ScanError(
            f"{path} is not text ({control:,} control characters in {len(text):,}: binary "
            "data, or an encoding other than UTF-8 and latin-1)"
        )
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ScanError(f"{path} holds no examples (empty file)")
    return lines


def _outcome(read, path):
    try:
        return ("ok", read(path))
    except ScanError as exc:
        return ("error", str(exc))


WORDS = ["markets", "fell", "the", "café", "naïve", "Â£5", "東京", "🙂", "x", "über", "—"]
CONTROLS = ["\x01", "\x07", "\x1b", "\x7f", "\x85", "\x9f", "\x80", "\x1c"]
BREAKS = ["\n", "\n", "\n", "\r\n", "\r", "\x0c", "\x0b", "\u2028"]
BLANKS = ["", " ", "\t", "  \t "]


@st.composite
def text_files(draw) -> bytes:
    lines = []
    controls = draw(st.sampled_from([0, 0, 3, 30]))  # per 1,000 words
    for _ in range(draw(st.integers(0, 30))):
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.sampled_from(BLANKS)))
            continue
        n = draw(st.integers(1, 12))
        words = [
            draw(st.sampled_from(CONTROLS))
            if draw(st.integers(1, 1000)) > 1000 - controls  # (hypothesis leans to 1)
            else draw(st.sampled_from(WORDS))
            for _ in range(n)
        ]
        lines.append(" ".join(words))
    breaks = [draw(st.sampled_from(BREAKS)) for _ in lines]
    if lines and draw(st.booleans()):
        breaks[-1] = ""  # no final line break
    text = "".join(a + b for a, b in zip(lines, breaks, strict=True))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1"]))
    data = text.encode(encoding, errors="replace")
    if data and draw(st.integers(0, 7)) == 0:  # a stray byte: UTF-8 invalid, or a NUL
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xe9", b"\x00"])) + data[at:]
    return data


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(data=text_files(), chunk=st.sampled_from([1, 2, 3, 7, 64, 1 << 20]))
def test_streaming_gives_the_lines_and_errors_of_the_whole_file(tmp_path_factory, data, chunk):
    path = tmp_path_factory.mktemp("t") / "data.txt"
    path.write_bytes(data)
    want = _outcome(whole_file_lines, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "READ_CHUNK", chunk)
        got = _outcome(lambda p: list(TextLines(p).lines()), path)
        table = _outcome(lambda p: read_table(p)["text"], path)
    assert got == want
    assert table == want
    whole = _outcome(read_text_file, path)
    if want[0] == "ok" or "holds no examples" in want[1]:
        assert whole[0] == "ok" and [t for t in whole[1].splitlines() if t.strip()] == (
            want[1] if want[0] == "ok" else []
        )
    else:
        assert whole == want


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
@pytest.mark.parametrize("control", ["\x01", "\x7f", "\x85", "\x9f"])
@pytest.mark.parametrize("extra", [0, 1])
def test_control_share_is_one_percent_of_the_characters(tmp_path, encoding, control, extra):
    """10 controls in 1,000 characters pass, 11 do not; characters, not bytes: "é" is two bytes
    in UTF-8, so a byte count would let 19 controls pass."""
    path = tmp_path / "t.txt"
    text = "é" * (989 - extra) + "\n" + control * (10 + extra)
    path.write_bytes(text.encode(encoding))
    assert len(text) == 1000
    want = _outcome(whole_file_lines, path)
    assert want[0] == ("error" if extra else "ok")
    for chunk in (1, 5, 1 << 20):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sources, "READ_CHUNK", chunk)
            assert _outcome(lambda p: list(TextLines(p).lines()), path) == want
    assert _outcome(read_text_file, path)[0] == want[0]


def test_scan_counts_a_streamed_file_as_its_lines(tmp_path, minilm_tokenizer, monkeypatch):
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, rng.integers(1, 40))) for _ in range(300)]
    text = "\r\n".join(line if i % 7 else "   " for i, line in enumerate(lines))
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(sources, "READ_CHUNK", 100)
    monkeypatch.setattr(sources, "BATCH_CHARS", 500)  # many batches, of a few lines each
    kept = whole_file_lines(path)
    for max_length in (None, 8):
        result = scan(minilm_tokenizer, path, max_length=max_length, batch_size=32)
        want = count_texts(minilm_tokenizer, kept, max_length=max_length)
        assert np.array_equal(result.counts, want)
        assert result.num_examples == len(kept) == 300 - len(range(0, 300, 7))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "holds no examples (empty file)"),
        (b" \n\t\r\n\n", "holds no examples (empty file)"),
        (b"caf\xc3\xa9\x00 menu\n", "is not text (it holds NUL bytes"),
        (bytes(range(1, 9)) * 40 + b"\n", "is not text (320 control characters in 321:"),
    ],
)
def test_scan_refuses_what_it_refused_before(tmp_path, minilm_tokenizer, data, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(ScanError, match=re.escape(message)) as info:
        scan(minilm_tokenizer, path)
    assert _outcome(whole_file_lines, path) == ("error", str(info.value))


class _CountingTokenizer:
    """A slow-path tokenizer (no backend) that costs nothing: one id per text, its length % 97."""

    def __len__(self) -> int:
        return 97

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[len(t) % 97] for t in texts]}


def test_scanning_a_text_file_holds_memory_for_a_chunk_not_the_file(tmp_path):
    """Reading the whole 30 MB file (bytes, text, lines) peaked at over 100 MB."""
    path = tmp_path / "big.txt"
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(WORDS, n)) for n in rng.integers(1, 60, 2000)]
    block = ("\n".join(lines) + "\n").encode("utf-8")
    repeats = 30 * 2**20 // len(block) + 1
    with open(path, "wb") as f:
        for _ in range(repeats):
            f.write(block)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        result = scan(_CountingTokenizer(), path, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.num_examples == len(lines) * repeats
    want = np.bincount([len(line) % 97 for line in lines], minlength=97)
    assert np.array_equal(result.counts, want * repeats)
    assert peak < size / 4, f"peak {peak / 2**20:.1f} MiB scanning {size / 2**20:.0f} MiB"
