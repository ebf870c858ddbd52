"""Every python and bash block of README.md and docs/ runs, against the packaged models, so a
recipe cannot drift from the code.

The blocks of one page run in order in one namespace (python) or one shell folder (bash), in a
temporary folder; `vocabprune` in a bash block is this Python's `-m vocabprune`. Before a block:
- `<!-- not run: REASON -->` skips it (a synopsis, a cluster, the set-up itself);
- `<!-- setup: CODE -->` runs CODE first, unseen by readers (the variables a README fragment
  takes for granted, at tiny sizes).
A ```text block right after a code block is what it prints: each of its lines must appear, in
order, in the block's output; numbers may differ, and `...` stands for anything. A deprecation
warning raised at a line of a block (a choice the recipe made) fails it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"<!--\s*(not run|setup):(.*?)-->", re.S)


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None = None
    setup: str = ""
    expected: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the marks between the previous block and each one, and
    the output after them."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i, since = 0, 0  # since: the first line after the previous block
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = "\n".join(lines[i + 1 : end])
        lang = m.group(1)
        if lang in ("python", "bash"):
            block = Block(page, i + 1, lang, body)
            for kind, text in MARK.findall("\n".join(lines[since:i])):
                if kind == "not run":
                    block.skip = text.strip()
                else:
                    block.setup += text.strip("\n") + "\n"
            found.append(block)
        elif (
            lang == "text"
            and found
            and found[-1].expected is None
            and _adjacent(lines, i, found[-1])
        ):
            found[-1].expected = body
        since = i = end + 1
    return found


def _adjacent(lines: list[str], start: int, block: Block) -> bool:
    """A text block follows the code block with only blank lines or one line of prose between."""
    end = block.line + block.code.count("\n") + 1
    between = [ln for ln in lines[end + 1 : start] if ln.strip()]
    return len(between) <= 1


def _pattern(line: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\.\.\.|\d[\d,.]*)", line.strip()):
        if piece == "...":
            parts.append(".*")
        elif piece and piece[0].isdigit():
            parts.append(r"[-+\d,.e]+")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def check_output(block: Block, output: str) -> None:
    """Each expected line appears, in order, in the output (numbers free, `...` anything)."""
    if block.expected is None:
        return
    got = output.splitlines()
    at = 0
    for want in (ln for ln in block.expected.splitlines() if ln.strip()):
        pattern = _pattern(want)
        hit = next((k for k in range(at, len(got)) if pattern.search(got[k])), None)
        assert hit is not None, f"{block.where}: {want!r} not printed; output:\n{output[-3000:]}"
        at = hit + 1


def run_python(block: Block, namespace: dict) -> str:
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stdout(out):
            if block.setup:
                exec(compile(block.setup, f"<setup {block.where}>", "exec"), namespace)
            exec(compile(block.code, f"<{block.where}>", "exec"), namespace)
    ours = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning))
        and str(w.filename).startswith(f"<{block.where}")
    ]
    assert not ours, f"{block.where}: the recipe causes {ours}"
    for w in caught:  # the others reach pytest's warnings summary
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out.getvalue()


def _commands(code: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", code)
    return [ln for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def run_bash(block: Block, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    vp = f"{shlex.quote(sys.executable)} -m vocabprune"
    output = ""
    for command in _commands(block.code):
        command = re.sub(r"(^|[;&|]\s*)vocabprune\b", lambda m: m.group(1) + vp, command)
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # in the order a terminal shows them
            text=True,
            timeout=600,
        )
        output += proc.stdout
        assert proc.returncode == 0, f"{block.where}: `{command}` failed:\n{proc.stdout[-3000:]}"
    return output


RUNNABLE = [p for p in PAGES if any(b.skip is None for b in blocks_of(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_every_block_of_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks_of(page):
        if block.skip is not None:
            continue
        if block.lang == "python":
            output = run_python(block, namespace)
        else:
            output = run_bash(block, tmp_path)
        check_output(block, output)


def test_every_block_is_run_or_says_why_not():
    """A skipped block names its reason; skips stay rare."""
    blocks = [b for p in PAGES for b in blocks_of(p)]
    skipped = [b for b in blocks if b.skip is not None]
    assert all(b.skip for b in skipped), [b.where for b in skipped if not b.skip]
    assert len(skipped) <= len(blocks) // 2, [b.where for b in skipped]


def test_the_output_check_can_fail():
    block = Block(ROOT / "README.md", 1, "python", "", expected="loss 0.51\nrestored ... rows")
    check_output(block, "step 1\nloss 0.73\nrestored 30,522 rows\n")
    with pytest.raises(AssertionError, match="not printed"):
        check_output(block, "restored 30,522 rows\nloss 0.73\n")
