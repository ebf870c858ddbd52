"""Scan memory: counting holds memory bounded by a piece of text, not by the longest line.

Two files made in /tmp from BBC News text (deleted afterwards):
- one line of VOCABPRUNE_BENCH_LINE_MB (default 200) MB, and one of
  VOCABPRUNE_BENCH_LINE_FULL_MB (default 200) MB for the untruncated cases (tokenizing 200 MB
  took 4 minutes on this 2-core machine at load 4-6; the 1 GB corpus 15-21 minutes a case);
- a corpus of VOCABPRUNE_BENCH_CORPUS_MB (default 1024) MB, one paragraph a line.

Each case runs in a fresh process (peak RSS = its ru_maxrss), with the packaged MiniLM tokenizer:
`scan(tokenizer, file, max_length=128)` and untruncated, against the tokenizer alone: the
backend's `encode_batch_fast` over the same lines in batches of 1,000 (the least work that gives
the ids) and, on the single line, the usual wrapper call `tokenizer(line, truncation=True,
max_length=128)` — on a slice of VOCABPRUNE_BENCH_WRAPPER_MB (default 8) MB only: it tokenizes
the whole line before truncating (about 200 bytes a character), so 200 MB would need ~40 GB.

    flock /tmp/vp-heavy.lock python benchmarks/scan_memory.py   # JSON to results/scan_memory.json

`main() -> dict`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "scan_memory.json"
LINE_MB = int(os.environ.get("VOCABPRUNE_BENCH_LINE_MB", "200"))
LINE_FULL_MB = int(os.environ.get("VOCABPRUNE_BENCH_LINE_FULL_MB", str(LINE_MB)))
CORPUS_MB = int(os.environ.get("VOCABPRUNE_BENCH_CORPUS_MB", "1024"))
WRAPPER_MB = int(os.environ.get("VOCABPRUNE_BENCH_WRAPPER_MB", "8"))
TMP = Path(os.environ.get("VOCABPRUNE_BENCH_TMP", "/tmp"))


def _paragraphs() -> list[str]:
    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir

    texts = read_labelled_folder(bbc_news_dir())["text"]
    return [p.strip() for t in texts for p in t.split("\n") if p.strip()]


def _line(path: Path, mb: int, paragraphs: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        written, i = 0, 0
        while written < mb * 2**20:
            written += f.write(paragraphs[i % len(paragraphs)] + " ")
            i += 1
        f.write("\n")
    return path


def make_files() -> tuple[Path, Path, Path]:
    """The single-line files and the corpus, written in /tmp."""
    paragraphs = _paragraphs()
    line = _line(TMP / "vp-bench-line.txt", LINE_MB, paragraphs)
    full = _line(TMP / "vp-bench-line-full.txt", LINE_FULL_MB, paragraphs)
    corpus = TMP / "vp-bench-corpus.txt"
    with open(corpus, "w", encoding="utf-8") as f:
        written, i = 0, 0
        while written < CORPUS_MB * 2**20:
            written += f.write(paragraphs[i % len(paragraphs)] + "\n")
            i += 1
    return line, full, corpus


def _case(name: str, path: str) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np

    from vocabprune.core.loaders import load_tokenizer
    from vocabprune.data.scan import scan
    from vocabprune.fixtures import minilm_path

    tokenizer = load_tokenizer(str(minilm_path()))
    t0 = time.perf_counter()
    if name.startswith("scan"):
        max_length = 128 if name.endswith("128") else None
        result = scan(tokenizer, path, max_length=max_length, vocab_size=30522, progress=False)
        tokens = result.total_tokens
    elif name.startswith("backend"):
        backend = tokenizer.backend_tokenizer
        backend.no_padding()
        if name.endswith("128"):
            backend.enable_truncation(128)
        else:
            backend.no_truncation()
        tokens, batch = 0, []
        with open(path, encoding="utf-8") as f:
            for line in f:
                batch.append(line.rstrip("\n"))
                if len(batch) == 1000:
                    tokens += sum(len(e.ids) for e in backend.encode_batch_fast(batch))
                    batch = []
        if batch:
            tokens += sum(len(e.ids) for e in backend.encode_batch_fast(batch))
    else:  # the wrapper on a slice of the single line
        text = Path(path).read_text(encoding="utf-8")[: WRAPPER_MB * 2**20]
        ids = tokenizer(text, truncation=True, max_length=128)["input_ids"]
        tokens = int(np.asarray(ids).size)
    seconds = time.perf_counter() - t0
    return {
        "case": name,
        "seconds": round(seconds, 2),
        "tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds) if seconds else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _run(name: str, path: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, __file__, "--case", name, str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        return {"case": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> dict:
    line, full, corpus = make_files()
    try:
        cases = {
            "single_line": [
                _run("scan_128", line),
                _run("wrapper_128_slice", line),
            ],
            "single_line_untruncated": [
                _run("scan_untruncated", full),
                _run("backend_untruncated", full) if LINE_FULL_MB <= 32 else None,
            ],
            "corpus": [
                _run("scan_128", corpus),
                _run("backend_128", corpus),
                _run("scan_untruncated", corpus),
                _run("backend_untruncated", corpus),
            ],
        }
    finally:
        for path in (line, full, corpus):
            path.unlink(missing_ok=True)
    report = {
        "line_mb": LINE_MB,
        "line_untruncated_mb": LINE_FULL_MB,
        "corpus_mb": CORPUS_MB,
        "wrapper_slice_mb": WRAPPER_MB,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_at_start": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cases": {k: [c for c in v if c] for k, v in cases.items()},
    }
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(_case(sys.argv[2], sys.argv[3])))
    else:
        print(json.dumps(main(), indent=2))
