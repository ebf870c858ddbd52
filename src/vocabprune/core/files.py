"""Files: the one place vocabprune writes outputs, and reads JSON with one clear error.

Every output (a folder, a kept-vocabulary file, counts and their sidecar, a plot, a scratch
folder) is written to a temporary beside it and renamed into place only when complete, under
these rules (`check_target`, applied before the work and again at the final rename):

- an input of the run (`output_rules(inputs=...)`) is never an output, nor a folder holding one;
- a symbolic link is refused, never replaced;
- an existing output is replaced only with overwrite, and then only when vocabprune wrote it (a
  folder holding a `vocabprune*.json` manifest or marker, or empty; a file with its mark);
- the final rename never replaces an output that appeared while the run worked: of two runs
  writing one path, one wins and the other fails naming it;
- a temporary carries a lock file its writer holds (flock) with the writer's host, PID namespace
  and PID, so the temporaries of other runs are removed only once their writer is provably gone;
- an OS error while writing (no space, read-only, name too long) is one line naming the output,
  and the temporaries are removed.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vocabprune.core.errors import VocabPruneError

# Every temporary vocabprune writes carries this tag and a run token ("w" + 12 hex digits);
# beside it, `<...>.TAG-TOKEN.lock` is held (flock) by its writer while the temporary exists.
TMP_TAG = "vocabprune-tmp"
_TOKEN = re.compile(rf"{TMP_TAG}-(w[0-9a-f]{{12}})")
_NAME_KEEP = 48  # characters of the output's name kept in a temporary's name (NAME_MAX)
_SCAN = 1 << 16  # bytes read at each end of a file to tell whether vocabprune wrote it


class OutputError(VocabPruneError):
    """An output that may not be written (an input, a link, someone else's file) or that the
    system refused (no space, read-only)."""


# -- the rules of a run -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """overwrite: None (API callers) lets a file be replaced; the CLI sets it from
    --overwrite. inputs: the run's inputs, resolved."""

    overwrite: bool | None = None
    inputs: tuple[Path, ...] = field(default_factory=tuple)


_NO_RULES = Rules()
_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar(
    "vocabprune_rules", default=None
)


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


@contextlib.contextmanager
def output_rules(
    *, overwrite: bool, inputs: Iterable[str | os.PathLike[str] | None] = ()
) -> Iterator[None]:
    """Within the block every output obeys --overwrite and never touches an input."""
    token = _RULES.set(Rules(overwrite, tuple(_resolved(p) for p in inputs if p)))
    try:
        yield
    finally:
        _RULES.reset(token)


def _marked(folder: Path) -> bool:
    """A folder vocabprune wrote: it holds its manifest/marker (vocabprune*.json)."""
    return any(p.is_file() for p in folder.glob("vocabprune*.json"))


# What a file vocabprune wrote holds near one end: the "format" of its JSON files and of the
# safetensors counts header ("vocabprune.kept_vocab", ...), a plot's creator (PNG, PDF, SVG).
_FILE_MARKS = (
    b'"vocabprune.',
    b"Software\x00vocabprune",
    b"/Creator (vocabprune)",
    b"<dc:title>vocabprune</dc:title>",
)


def is_ours(path: Path) -> bool:
    """Whether replacing `path` loses nothing but a vocabprune output: an empty folder, a folder
    holding a vocabprune manifest, a file with vocabprune's mark near its start or end (kept
    vocabularies, counts, plots: _FILE_MARKS), or a .npy whose sidecar is one."""
    if path.is_dir():
        return _marked(path) or not any(path.iterdir())
    if path.suffix == ".npy":
        return is_ours(path.with_name(path.name + ".json"))
    try:
        with open(path, "rb") as f:
            head = f.read(_SCAN)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - _SCAN, len(head)))
            tail = f.read(_SCAN)
    except OSError:
        return False
    return any(mark in head or mark in tail for mark in _FILE_MARKS)


def _first_foreign(folder: Path) -> Path:
    """A file in `folder` to name (lazily: the folder may be a home directory)."""
    for path in folder.rglob("*"):
        if path.is_file() or path.is_symlink():
            return path
    return folder


def check_target(
    path: str | os.PathLike[str], *, kind: str, overwrite: bool | None = None, what: str = ""
) -> Path:
    """Refuse an output that would lose a file: a link, an input (or a folder holding one), an
    existing output without overwrite, or with overwrite one vocabprune did not write.
    kind: "file" or "folder". Returns the path."""
    target = Path(path)
    rules = _RULES.get() or _NO_RULES
    name = f"{what} {target}".strip()
    if overwrite is None:
        overwrite = True if rules.overwrite is None else rules.overwrite
    strict = rules.overwrite is not None or kind == "folder"
    if target.is_symlink():
        raise OutputError(f"{name} is a symbolic link; give the path it points to")
    if any(_TOKEN.search(part) for part in target.parent.parts):
        return target  # inside a temporary vocabprune is writing: the whole of it is checked
    real = _resolved(target)
    for source in rules.inputs:
        if source == real or real in source.parents:
            held = "" if source == real else f" (it holds {source})"
            raise OutputError(f"{name} is an input of this run{held}; write the output elsewhere")
    here = _resolved(os.getcwd())
    if kind == "folder" and (real == here or real in here.parents):
        raise OutputError(f"{name} is the current folder or holds it; name a new folder")
    if not target.exists():
        return target
    if kind == "folder" and not target.is_dir():
        raise OutputError(f"{name} is a file, not a folder")
    if kind == "file" and target.is_dir():
        raise OutputError(f"{name} is a folder; give a file name")
    if kind == "file" and not target.is_file():
        raise OutputError(f"{name} is not a regular file (a device or pipe); give a file name")
    if not overwrite:
        raise OutputError(f"{name} already exists (use --overwrite to replace it)")
    if strict and not is_ours(target):
        foreign = _first_foreign(target) if target.is_dir() else target
        raise OutputError(
            f"{name} was not written by vocabprune (--overwrite would delete {foreign}); "
            "--overwrite replaces only vocabprune outputs or an empty folder"
        )
    return target


# -- OS errors as one line ----------------------------------------------------------------------

_OS_CODE = re.compile(r"(?:os error|Os { code:)\s*(\d+)")  # Rust writers (safetensors)


def _reason(exc: BaseException, where: Path) -> str | None:
    """The system's reason for a failed write, or None when the error is not the system's."""
    code = getattr(exc, "errno", None)
    if code is None:
        match = _OS_CODE.search(str(exc))
        code = int(match.group(1)) if match else None
    if code is None and isinstance(exc, OSError) or "space" in str(exc).lower():
        with contextlib.suppress(OSError):
            if os.statvfs(where).f_bavail == 0:
                code = errno.ENOSPC
    if code:
        return os.strerror(code)
    return str(exc).splitlines()[0] if isinstance(exc, OSError) and str(exc) else None


@contextlib.contextmanager
def _one_line(target: Path, folder: Path) -> Iterator[None]:
    try:
        yield
    except VocabPruneError:
        raise
    except Exception as exc:  # another library's write failing on a full or read-only disk
        reason = _reason(exc, folder)
        if reason is None:
            raise
        raise OutputError(f"cannot write {target}: {reason}") from exc


# -- temporaries and their writers' locks -------------------------------------------------------


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "?"


def _record() -> str:
    return f"{socket.gethostname()} {_pid_namespace()} {os.getpid()}\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class Claim:
    """The temporaries of one write beside `target`, and the lock that says their writer runs.

    The lock file is made under a name cleaners ignore, locked, and only then renamed to its
    tagged name, so no cleaner can ever see an unlocked lock of a live writer."""

    def __init__(self, target: Path) -> None:
        self.folder = target.parent
        self.stem = f".{target.name[:_NAME_KEEP]}.{TMP_TAG}-w{secrets.token_hex(6)}"
        self.paths: list[Path] = []
        self.lock = self.folder / f"{self.stem}.lock"
        building = self.folder / f".{target.name[:_NAME_KEEP]}.vplock-{secrets.token_hex(6)}"
        self.fd = os.open(building, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            with contextlib.suppress(OSError):  # no flock here: the record decides
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(self.fd, _record().encode())
            os.rename(building, self.lock)
        except BaseException:
            os.close(self.fd)
            building.unlink(missing_ok=True)
            raise

    def path(self, kind: str = "", suffix: str = ".tmp") -> Path:
        """A fresh temporary name (known before it exists, so `release` removes it whenever an
        interrupt lands)."""
        path = self.folder / f"{self.stem}-{kind}{secrets.token_hex(4)}{suffix}"
        self.paths.append(path)
        return path

    def release(self) -> None:
        for path in self.paths:
            remove(path)
        self.lock.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1


def _writer_gone(lock: Path) -> tuple[bool, int | None]:
    """(whether the writer of `lock` is provably gone, an fd holding its lock when it is)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True, fd
    except BlockingIOError:
        os.close(fd)
        return False, None
    except OSError:  # no flock on this filesystem: the recorded host, namespace and pid
        pass
    try:
        host, namespace, pid = os.read(fd, 512).decode().split()
    except (OSError, ValueError, UnicodeDecodeError):
        os.close(fd)
        return False, None
    mine = host == socket.gethostname() and namespace == _pid_namespace()
    gone = mine and pid.isdigit() and not _alive(int(pid))
    if not gone:
        os.close(fd)
        return False, None
    return True, fd


def clean_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries in `folder` whose writer is provably gone: its lock is free (or,
    where flock is not supported, the recorded host and PID namespace are ours and the PID is
    not running). Temporaries of a live writer, here or on another host, are left alone."""
    root = Path(folder)
    if not root.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for path in root.glob(f".*{TMP_TAG}-w*"):
        match = _TOKEN.search(path.name)
        if match:
            groups.setdefault(match.group(1), []).append(path)
    removed = []
    for paths in groups.values():
        locks = [p for p in paths if p.name.endswith(".lock")]
        if len(locks) != 1:
            continue  # no lock: not provably gone
        gone, fd = _writer_gone(locks[0])
        if not gone or fd is None:
            continue
        try:
            for path in paths:
                if path != locks[0]:
                    remove(path)
                    removed.append(path)
            locks[0].unlink(missing_ok=True)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def parents_of(path: Path) -> Iterator[None]:
    """Create the missing folders above `path`; if the block fails, remove those it created
    (when still empty), so a failed write leaves no folder that was not there before."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        with _one_line(path, parent):
            path.parent.mkdir(parents=True, exist_ok=True)
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
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()


@contextlib.contextmanager
def claimed(target: Path) -> Iterator[Claim]:
    """A Claim beside `target` (stale temporaries of gone writers removed first), released when
    the block ends however it ends."""
    clean_stale(target.parent)
    with _one_line(target, target.parent):
        claim = Claim(target)
    try:
        yield claim
    finally:
        claim.release()


# -- the final rename ---------------------------------------------------------------------------

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _libc_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.renameat2
    except (OSError, AttributeError):
        return None


_renameat2 = _libc_renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError when `dst` exists, atomically
    (renameat2 RENAME_NOREPLACE; a hard link for files where the filesystem lacks it)."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), 1) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(dst))
    if src.is_dir():  # no atomic way left: check, then rename (a narrow race remains)
        if dst.exists() or dst.is_symlink():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)
        return
    os.link(src, dst)
    src.unlink()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _appeared(target: Path) -> OutputError:
    return OutputError(
        f"{target} appeared while this run worked (another run writing it?); it was not "
        "replaced and this run's output is discarded"
    )


def _unchanged(target: Path, seen: tuple[int, int] | None) -> None:
    """The output is what the run saw when it checked it (or gone): else another run wrote it."""
    now = _identity(target)
    if now is not None and now != seen:
        raise _appeared(target)


def _final_check(target: Path, seen: tuple[int, int] | None, **rules: Any) -> None:
    """The rules again, just before the rename; an output another run placed meanwhile is
    reported as such (whichever check notices it first)."""
    try:
        check_target(target, **rules)
    except OutputError:
        _unchanged(target, seen)
        raise
    _unchanged(target, seen)


def _place(tmp: Path, target: Path, seen: tuple[int, int] | None, claim: Claim) -> None:
    """Move the finished `tmp` to `target`: onto nothing, or onto exactly the output that was
    there when the run checked it (moved aside first, removed only once `tmp` is in place)."""
    if seen is None or _identity(target) is None:
        try:
            rename_noreplace(tmp, target)
        except FileExistsError as exc:
            raise _appeared(target) from exc
        return
    old = claim.path("old-", "")
    os.rename(target, old)
    if _identity(old) != seen:  # someone replaced it meanwhile: put theirs back, fail
        with contextlib.suppress(OSError):
            rename_noreplace(old, target)
        raise _appeared(target)
    try:
        rename_noreplace(tmp, target)
    except FileExistsError as exc:
        raise _appeared(target) from exc


# -- writing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """A scratch folder beside `beside` (a run's output), removed when the block ends however it
    ends (errors, Ctrl-C, SIGTERM raised as an interrupt)."""
    target = Path(beside)
    with parents_of(target), claimed(target) as claim:
        tmp = claim.path(f"{kind}-", "")
        with _one_line(target, target.parent):
            tmp.mkdir(mode=0o700)
        yield tmp


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], *, overwrite: bool | None = None, what: str = ""
) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it becomes `path` only if the block succeeds.

    overwrite None: the run's rule (API callers: a file may be replaced)."""
    target = check_target(path, kind="file", overwrite=overwrite, what=what)
    seen = _identity(target)
    with parents_of(target), claimed(target) as claim:
        tmp = claim.path()
        with _one_line(target, target.parent):
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            yield tmp
            _final_check(target, seen, kind="file", overwrite=overwrite, what=what)
            _place(tmp, target, seen, claim)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str], *, overwrite: bool = False, what: str = ""
) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds.

    An existing folder is replaced only with overwrite=True and only when vocabprune wrote it
    (or it is empty), and only after the new one is complete, so the previous output survives
    any failure."""
    target = check_target(path, kind="folder", overwrite=overwrite, what=what)
    seen = _identity(target)
    with parents_of(target), claimed(target) as claim:
        tmp = claim.path("", "")
        with _one_line(target, target.parent):
            tmp.mkdir()  # the mode any new folder gets
            yield tmp
            _normal_modes(tmp)
            _final_check(target, seen, kind="folder", overwrite=overwrite, what=what)
            _place(tmp, target, seen, claim)


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


# Files one of which every Hugging Face tokenizer folder holds; without them AutoTokenizer may
# build an empty tokenizer that turns every word into the unknown token.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
EXPORT_MANIFEST = "vocabprune_export.json"  # deploy.manifest.MANIFEST (deploy sits above core)


def check_model_folder(path: str | os.PathLike[str], *, tokenizer: bool = True) -> None:
    """A Hugging Face model folder a model (and, with `tokenizer`, its tokenizer) can come from:
    it exists and holds its config.json; with `tokenizer`, it also holds tokenizer files and is
    not a compact vocabprune export (renumbered ids; the original tokenizer sits in a subfolder).
    Checked before any import of torch or transformers, so a wrong --model fails at once."""
    folder = Path(path)
    if not folder.exists():
        raise VocabPruneError(f"model folder not found: {path}")
    if not folder.is_dir():
        return
    if not (folder / "config.json").is_file():
        raise VocabPruneError(f"{path} is not a Hugging Face model folder (no config.json)")
    if not tokenizer:
        return
    manifest = folder / EXPORT_MANIFEST
    if manifest.is_file():
        try:
            standalone = (
                json.loads(manifest.read_text(encoding="utf-8")).get("kind") == "standalone"
            )
        except (OSError, ValueError, AttributeError):
            standalone = False
        if not standalone:
            raise VocabPruneError(
                f"{path} is a compact model written by `vocabprune prune` ({EXPORT_MANIFEST}); "
                "pass the original model folder (load an export with vocabprune.load_compact)"
            )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise VocabPruneError(
            f"model folder {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)"
        )


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
