"""Short MiniLM + BBC News fine-tunes through the CLI, run once per test session and shared by
test_weight_decay.py and test_resume.py (each run costs seconds of CPU)."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

from vocabprune.cli.main import main

WD_ARGS = ["--weight-decay", "0.1", "--lr", "1e-3", "--max-steps", "4", "--batch-size", "8"]
WD_ARGS += ["--max-length", "32", "--eval-fraction", "0", "--seed", "5", "--limit", "48"]


@functools.cache
def weight_decay_runs(bbc_dir: str) -> Path:
    """root/a: pruned, --weight-decay 0.1, checkpoints every 2 steps in root/ckpts-a;
    root/full: the same with --no-prune; root/b: the pruned run "interrupted" after step 2 (only
    its checkpoint-2 survives, copied to root/ckpts-b) and resumed with --resume auto.
    Each folder holds the model and report.json (the --json report)."""
    root = Path(tempfile.mkdtemp(prefix="vocabprune-wd-runs-"))
    atexit.register(shutil.rmtree, root, True)
    # A 96-article BBC News subset as JSONL: the runs then read and tokenize 96 articles, not
    # 2,225 (--limit 48 picks the same 48 of them in every run).
    import numpy as np

    from vocabprune.data.sources import read_labelled_folder

    columns = read_labelled_folder(Path(bbc_dir))
    rows = np.random.default_rng(0).permutation(len(columns["text"]))[:96]
    subset = root / "bbc96.jsonl"
    subset.write_text(
        "".join(
            json.dumps({"text": columns["text"][i], "label": columns["label"][i]}) + "\n"
            for i in sorted(rows)
        )
    )
    base = ["finetune", "--data", str(subset), "--json"] + WD_ARGS

    def run(name: str, *extra: str) -> None:
        out = root / name
        report = root / f"{name}.json"
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(base + ["--out", str(out), *extra])
        assert code == 0, f"run {name} failed"
        report.write_text(buf.getvalue())
        json.loads(buf.getvalue())

    run("a", "--save-steps", "2", "--checkpoint-dir", str(root / "ckpts-a"))
    run("full", "--no-prune")
    (root / "ckpts-b").mkdir()
    shutil.copytree(root / "ckpts-a" / "checkpoint-2", root / "ckpts-b" / "checkpoint-2")
    run("b", "--save-steps", "2", "--resume", "auto", "--checkpoint-dir", str(root / "ckpts-b"))
    return root
