"""Reading examples from the places users keep them: files, folders, datasets.

Everything becomes columns (a dict of equal-length lists), and `read_examples` is the one reader
every job uses: texts, the second texts of sentence pairs, and labels, aligned row by row.
Supported: .txt (one example per line), .jsonl/.json, .csv/.tsv, .parquet, and a folder of .txt
files whose sub-folder names are labels (the BBC News layout).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vocabprune.core.errors import ScanError

Columns = dict[str, list[Any]]

TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "document", "article", "question", "prompt")
LABEL_COLUMN_GUESSES = ("label", "labels", "class", "category", "target")


# A text file may hold a few stray control characters; binary data holds many. Controls are C0
# but for \t \n \v \f \r, DEL and C1 (U+0080-U+009F); counted on the bytes, without decoding:
# C0 and DEL are single bytes in both encodings, C1 is one byte \x80-\x9f in latin-1 and the
# pair \xc2 \x80-\x9f in UTF-8 (where a character is a byte that is not \x80-\xbf).
CONTROL_SHARE = 0.01
_C0_DEL = bytes([*range(9), *range(14, 32), 0x7F])
_C1 = bytes(range(0x80, 0xA0))
_CONTINUATION = bytes(range(0x80, 0xC0))
READ_CHUNK = 1 << 18  # bytes read at a time when a .txt file is checked and read line by line
BATCH_CHARS = 1 << 24  # characters a batch of lines holds at most (and at least one line)
# What str.splitlines() splits at: a chunk ending in one of them ends its last line.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _deleted(data: bytes, which: bytes) -> int:
    return len(data) - len(data.translate(None, which))


class TextCheck:
    """Whether a file's bytes, fed chunk by chunk, are text, and in which encoding: UTF-8, or
    latin-1 for a file that is not valid UTF-8 (one BBC News article is cp1252), decided for the
    whole file. Not text: NUL bytes (binary data, or UTF-16/32), or control characters in more
    than CONTROL_SHARE of the characters (binary data, or an encoding other than these)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.utf8 = True
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._last = b""  # the previous chunk's last byte: a \xc2 that starts a C1 pair
        self._bytes = self._c0 = self._c1_latin1 = self._c1_utf8 = self._continuation = 0

    def update(self, chunk: bytes) -> None:
        if b"\x00" in chunk:
            raise ScanError(
                f"{self.path} is not text (it holds NUL bytes: binary data, or UTF-16/32)"
            )
        self._bytes += len(chunk)
        self._c0 += _deleted(chunk, _C0_DEL)
        high = _deleted(chunk, _C1)
        self._c1_latin1 += high
        if self.utf8:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self.utf8 = False
        if self.utf8:
            self._continuation += _deleted(chunk, _CONTINUATION)
            if high and b"\xc2" in self._last + chunk:
                pairs = np.frombuffer(self._last + chunk, dtype=np.uint8)
                starts = np.flatnonzero(pairs[:-1] == 0xC2) + 1
                self._c1_utf8 += int(np.count_nonzero(pairs[starts] < 0xA0))
        self._last = chunk[-1:] or self._last

    def encoding(self) -> str:
        """'utf-8' or 'latin-1', once the whole file has been fed; else the error naming it."""
        if self.utf8:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self.utf8 = False
        if self.utf8:
            chars, control = self._bytes - self._continuation, self._c0 + self._c1_utf8
        else:
            chars, control = self._bytes, self._c0 + self._c1_latin1
        if control > CONTROL_SHARE * chars:
            raise ScanError(
                f"{self.path} is not text ({control:,} control characters in {chars:,}: binary "
                "data, or an encoding other than UTF-8 and latin-1)"
            )
        return "utf-8" if self.utf8 else "latin-1"


def _cannot_read(path: Path, exc: OSError) -> ScanError:
    return ScanError(f"cannot read {path}: {exc.strerror or exc}")


def read_text_file(path: Path) -> str:
    """The whole text of a file checked by TextCheck (UTF-8, else latin-1; binary refused)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _cannot_read(path, exc) from exc
    check = TextCheck(path)
    check.update(data)
    return data.decode(check.encoding())


class TextLines:
    """The non-blank lines of a .txt file (one example each), read in batches: memory for a
    batch and the longest line, never the whole file. The file is checked (TextCheck) when this
    is made, before any line is read; the lines are those of str.splitlines() on its whole text.

    Quacks as a dataset of one column, "text" (`iter(batch_size)`), so scanning counts it batch
    by batch; `position` is the bytes read so far, of `nbytes`."""

    column_names = ["text"]

    def __init__(self, path: Path) -> None:
        self.path = path
        check = TextCheck(path)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    check.update(chunk)
                self.nbytes = f.tell()
        except OSError as exc:
            raise _cannot_read(path, exc) from exc
        self.encoding = check.encoding()
        self.position = 0

    def lines(self) -> Iterator[str]:
        """Every non-blank line, in order; a file without one is an error naming it."""
        decoder = codecs.getincrementaldecoder(self.encoding)()
        parts: list[str] = []  # the line being read, in pieces (no quadratic joining)
        found = False
        self.position = 0
        try:
            with open(self.path, "rb") as f:
                while True:
                    chunk = f.read(READ_CHUNK)
                    self.position += len(chunk)
                    text = decoder.decode(chunk, final=not chunk)
                    if text:
                        pieces = text.splitlines()
                        tail = None if text[-1] in _LINE_BREAKS else pieces.pop()
                        if pieces:  # at least one line ends in this chunk
                            pieces[0] = "".join([*parts, pieces[0]])
                            parts = []
                            for line in pieces:
                                if line.strip():
                                    found = True
                                    yield line
                        if tail is not None:
                            parts.append(tail)
                    if not chunk:
                        break
        except OSError as exc:
            raise _cannot_read(self.path, exc) from exc
        last = "".join(parts)
        if last.strip():
            found = True
            yield last
        if not found:
            raise ScanError(f"{self.path} holds no examples (empty file)")

    def iter(self, batch_size: int) -> Iterator[Columns]:
        """Batches {"text": lines} of at most `batch_size` lines and BATCH_CHARS characters."""
        batch: list[str] = []
        chars = 0
        for line in self.lines():
            if batch and (len(batch) >= batch_size or chars + len(line) > BATCH_CHARS):
                yield {"text": batch}
                batch, chars = [], 0
            batch.append(line)
            chars += len(line)
        if batch:
            yield {"text": batch}


def read_labelled_folder(folder: Path) -> Columns:
    """<folder>/<label>/<name>.txt -> columns text, label (labels are the sub-folder names)."""
    texts: list[str] = []
    labels: list[str] = []
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    for sub in subdirs:
        for file in sorted(sub.glob("*.txt")):
            texts.append(read_text_file(file).strip())
            labels.append(sub.name)
    if not texts:
        loose = sorted(folder.glob("*.txt"))
        texts = [read_text_file(f).strip() for f in loose]
        if texts:
            return {"text": texts}
        raise ScanError(
            f"folder {folder} holds no .txt files (directly or in label sub-folders) and is no "
            "datasets save_to_disk folder"
        )
    return {"text": texts, "label": labels}


def _records_to_columns(records: Sequence[Any], source: Path, what: str = "JSON line") -> Columns:
    if not records:
        raise ScanError(f"{source} holds no examples")
    names: list[str] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ScanError(f"{source}: {what} {i + 1} is a {type(rec).__name__}, not an object")
        for key in rec:
            if key not in names:
                names.append(key)
    return {name: [rec.get(name) for rec in records] for name in names}


def _read_json(source: Path) -> Columns:
    text = read_text_file(source)
    if source.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScanError(f"{source} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        return _records_to_columns(records, source, "element")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ScanError(
                f"{source}: line {number} is not valid JSON ({exc.msg}, column {exc.colno})"
            ) from exc
    return _records_to_columns(records, source)


def _read_csv(source: Path) -> Columns:
    csv.field_size_limit(2**31 - 1)  # long documents are data, not an error
    text = read_text_file(source)
    reader = csv.DictReader(
        io.StringIO(text, newline=""), delimiter="\t" if source.suffix.lower() == ".tsv" else ","
    )
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ScanError(f"{source}: line {reader.line_num} is not valid CSV ({exc})") from exc
    if reader.fieldnames is None:
        raise ScanError(f"{source} holds no examples (empty file)")
    if any(None in row for row in rows):  # more fields than the header names
        line = next(i for i, row in enumerate(rows) if None in row) + 2
        raise ScanError(f"{source}: line {line} has more fields than the header")
    return _records_to_columns(rows, source, "row")


def _read_parquet(source: Path) -> Columns:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow comes with datasets
        raise ScanError("reading .parquet needs pyarrow: pip install pyarrow") from exc
    try:
        table = pq.read_table(source)
    except Exception as exc:  # pyarrow's errors: one line naming the file
        raise ScanError(f"{source} is not a readable parquet file: {_first(exc)}") from exc
    if table.num_rows == 0:
        raise ScanError(f"{source} holds no examples")
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_datasets(source: Path, split: str | None) -> Columns:
    """A datasets `save_to_disk` folder (Dataset or DatasetDict: `split` picks one, default
    'train'), or an .arrow file."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dev dependency
        raise ScanError(f"reading {source} needs datasets: pip install datasets") from exc
    try:
        if source.is_file():
            data = datasets.Dataset.from_file(str(source))
        else:
            data = datasets.load_from_disk(str(source))
    except Exception as exc:  # datasets' errors: one line naming the file
        raise ScanError(
            f"{source} is not a readable datasets folder or file: {_first(exc)}"
        ) from exc
    if isinstance(data, datasets.DatasetDict):
        names = list(data)
        pick = split or ("train" if "train" in data else None)
        if pick not in data:
            raise ScanError(f"{source} holds the splits {', '.join(names)}: name one (PATH@SPLIT)")
        data = data[pick]
    elif split is not None:
        raise ScanError(f"{source} holds one dataset, not splits: drop @{split}")
    if len(data) == 0:
        raise ScanError(f"{source} holds no examples")
    return {name: list(data[name]) for name in data.column_names}


def _is_datasets_folder(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file()


def _split_of(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """PATH@SPLIT (a split of a save_to_disk folder) -> (PATH, SPLIT); a path that exists as
    written is taken whole."""
    source = Path(path)
    text = str(path)
    try:
        if source.exists() or "@" not in text:
            return source, None
    except OSError:
        return source, None
    base, _, split = text.rpartition("@")
    return Path(base), split or None


def check_source(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """(file or folder, split) of a data path that exists; else one error naming it. Cheap, so
    the command line checks every --data path before loading anything."""
    source, split = _split_of(path)
    try:
        found = source.exists()
    except OSError:  # e.g. a text passed where a path was expected: name too long
        found = False
    if not found:
        shown = str(source) if len(str(source)) <= 120 else f"{str(source)[:117]}..."
        raise ScanError(f"data not found: {shown!r} is not a file or folder")
    return source, split


def read_table(path: str | os.PathLike[str]) -> Columns:
    """Read one file or folder into columns."""
    source, split = check_source(path)
    if source.is_dir():
        if split is not None or _is_datasets_folder(source):
            return _read_datasets(source, split)
        return read_labelled_folder(source)
    suffix = source.suffix.lower()
    if suffix == ".txt":
        return {"text": list(TextLines(source).lines())}
    if suffix in (".jsonl", ".json"):
        return _read_json(source)
    if suffix in (".csv", ".tsv"):
        return _read_csv(source)
    if suffix == ".parquet":
        return _read_parquet(source)
    if suffix == ".arrow":
        return _read_datasets(source, split)
    raise ScanError(
        f"{source}: unsupported file type {suffix or '(none)'}; use .txt, .jsonl, .json, .csv, "
        ".tsv, .parquet, .arrow, a datasets save_to_disk folder or a folder of .txt files"
    )


def pick_text_columns(names: Sequence[str], text_column: str | None, source: str) -> list[str]:
    """The text column(s): given ("a" or "a,b" for sentence pairs) or guessed."""
    if text_column:
        wanted = [c.strip() for c in text_column.split(",") if c.strip()]
        if not 1 <= len(wanted) <= 2:
            raise ScanError(f"--text-column takes one column or two (a pair): {text_column!r}")
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ScanError(
                f"{source}: text column {missing[0]!r} not found (columns: {', '.join(names)})"
            )
        return wanted
    for guess in TEXT_COLUMN_GUESSES:
        if guess in names:
            return [guess]
    raise ScanError(
        f"{source}: no text column found (columns: {', '.join(names)}); pass --text-column"
    )


def pick_label_column(names: Sequence[str], label_column: str | None, source: str) -> str:
    """The label column: given or guessed."""
    if label_column:
        if label_column not in names:
            raise ScanError(
                f"{source}: label column {label_column!r} not found (columns: {', '.join(names)})"
            )
        return label_column
    for guess in LABEL_COLUMN_GUESSES:
        if guess in names:
            return guess
    raise ScanError(
        f"{source}: no label column found (columns: {', '.join(names)}); pass --label-column"
    )


def texts_of(
    columns: Columns, text_cols: list[str], source: str
) -> tuple[list[str], list[str] | None]:
    """The text (and optional pair) lists, with None and non-strings rejected clearly."""
    out = []
    for name in text_cols:
        values = columns[name]
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise ScanError(
                    f"{source}: column {name!r} row {i} is {type(v).__name__}, not text"
                )
        out.append(list(values))
    return out[0], (out[1] if len(out) > 1 else None)


@dataclass
class Examples:
    """Rows read from every data source, aligned: texts[i], pairs[i] and labels[i] are one row."""

    texts: list[str]
    pairs: list[str] | None  # second texts of sentence pairs, or None
    labels: list[Any] | None  # raw label values (None when labels were not asked for)

    def __len__(self) -> int:
        return len(self.texts)

    def title_body(self, source: str = "the data") -> Examples:
        """Pairs from texts that start with a title line (news articles): (title, body)."""
        if self.pairs is not None:
            return self
        titles, bodies = [], []
        for i, text in enumerate(self.texts):
            title, _, body = text.strip().partition("\n")
            if not title.strip() or not body.strip():
                raise ScanError(
                    f"{source}: example {i} has no title line and body to pair; give pairs "
                    "with --text-column a,b"
                )
            titles.append(title.strip())
            bodies.append(body.strip())
        return Examples(titles, bodies, self.labels)

    def joined(self, sep: str = "\n") -> list[str]:
        """One text per row: a pair joined by `sep` (language modelling reads both)."""
        if self.pairs is None:
            return list(self.texts)
        return [f"{a}{sep}{b}" for a, b in zip(self.texts, self.pairs, strict=True)]


def read_examples(
    paths: Sequence[str | os.PathLike[str]],
    text_column: str | None = None,
    label_column: str | None = None,
    *,
    labels: bool = False,
) -> Examples:
    """Texts (and pairs, and labels when asked) of every file or labelled folder, row-aligned.

    The same `text_column` applies to every source, so each gives one text per row, or a pair
    per row everywhere; labels are read when `labels` is asked for.
    """
    texts: list[str] = []
    pairs: list[str] = []
    values: list[Any] = []
    for path in paths:
        columns = read_table(path)
        names = list(columns)
        cols = pick_text_columns(names, text_column, str(path))
        first, second = texts_of(columns, cols, str(path))
        texts.extend(first)
        pairs.extend(second or [])
        if labels:
            values.extend(columns[pick_label_column(names, label_column, str(path))])
    if not texts:
        raise ScanError("the data holds no examples")
    return Examples(texts, pairs if pairs else None, values if labels else None)
