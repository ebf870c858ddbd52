"""Files: atomic writes (a crash or Ctrl-C mid-write leaves the previous output intact) and
reading JSON with one clear error."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vocabprune.core.errors import VocabPruneError

# Every temporary vocabprune writes carries this tag and the writer's pid, so a run killed
# outright (kill -9) leaves only clearly named temporaries, which the next run removes.
TMP_TAG = "vocabprune-tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries in `folder` that a vocabprune process which no longer runs left."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for path in root.glob(f"*{TMP_TAG}-*"):
        pid_text = path.name.split(f"{TMP_TAG}-", 1)[1].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def tmp_prefix(name: str) -> str:
    """The prefix of a temporary for `name`: hidden, tagged, with this process's pid."""
    return f".{name}.{TMP_TAG}-{os.getpid()}-"


def _tmp_path(target: Path, kind: str = "", suffix: str = ".tmp") -> Path:
    """A fresh temporary name beside `target`, known before it is created, so that a `finally`
    can remove it even when an interrupt lands the instant after it was made."""
    return target.parent / f"{tmp_prefix(target.name)}{kind}{secrets.token_hex(6)}{suffix}"


@contextlib.contextmanager
def parents_of(path: Path) -> Iterator[None]:
    """Create the missing folders above `path`; if the block fails, remove those it created
    (when still empty), so a failed write leaves no folder that was not there before."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def remove(path: Path) -> None:
    """Remove a file or a folder tree, whichever `path` is."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """A scratch folder beside `beside` (a run's output), removed when the block ends however it
    ends (errors, Ctrl-C, SIGTERM raised as an interrupt)."""
    target = Path(beside)
    with parents_of(target):
        clean_stale(target.parent)
        tmp = _tmp_path(target, f"{kind}-", "")
        try:
            tmp.mkdir(mode=0o700)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    target = Path(path)
    with parents_of(target):
        clean_stale(target.parent)
        tmp_path = _tmp_path(target)
        try:
            os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            yield tmp_path
            os.replace(tmp_path, target)
        finally:
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds.

    An existing folder (or file) is replaced only with overwrite=True, and only after the new
    one is complete, so the previous output survives any failure.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"output folder already exists: {target} (choose another or overwrite)"
        )
    with parents_of(target):
        clean_stale(target.parent)
        tmp, old = _tmp_path(target), _tmp_path(target, "old-")
        try:
            tmp.mkdir()  # the mode any new folder gets
            yield tmp
            _normal_modes(tmp)
            if target.exists() or target.is_symlink():
                old.mkdir()
                os.replace(target, old / "previous")
                os.replace(tmp, target)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_modes(folder: Path) -> None:
    """Files and folders written through private temporaries (transformers writes
    model.safetensors 0600, mkdtemp makes 0700) get the modes any new one would have, so the
    output folder is readable like any other."""
    mask = _umask()
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o777 & ~mask)
        elif path.is_file():
            path.chmod(0o666 & ~mask)


def check_model_folder(path: str | os.PathLike[str]) -> None:
    """A Hugging Face model folder exists (with its config.json); checked before any import of
    torch or transformers, so a wrong --model fails at once."""
    folder = Path(path)
    if not folder.exists():
        raise VocabPruneError(f"model folder not found: {path}")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise VocabPruneError(f"{path} is not a Hugging Face model folder (no config.json)")


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a JSON file; a missing, unreadable, truncated or corrupt file is one clear error."""
    source = Path(path)
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VocabPruneError(f"{what} not found: {source}") from exc
    except IsADirectoryError as exc:
        raise VocabPruneError(f"{what} {source} is a folder, not a file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VocabPruneError(f"{what} {source} is not valid JSON (truncated or corrupt)") from exc
    except OSError as exc:
        raise VocabPruneError(f"cannot read {what} {source}: {exc.strerror or exc}") from exc
