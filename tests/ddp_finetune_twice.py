"""Run by tests/test_distributed.py under torchrun (one start-up for everything):
`vocabprune finetune ARGS --out OUT/pruned`, the same with --no-prune into OUT/full, then ranks
that counted different data: their combined counts, the kept vocabulary built from them, and the
error when each rank builds its own. Rank 0 prints the two reports and one JSON object."""

import json
import sys

import numpy as np

import vocabprune as vp
from vocabprune.cli.main import main
from vocabprune.train import distributed as vpd


def different_data() -> dict:
    rank = vpd.rank()
    counts = np.zeros(10, dtype=np.int64)
    counts[[1, 2] if rank == 0 else [2, 7]] = [3, 1] if rank == 0 else [5, 2]  # shards differ
    summed = vpd.agree_counts(counts, op="sum")
    maxed = vpd.agree_counts(counts, op="max")
    kept = vp.KeptVocab.from_counts(summed, vocab_size=10)
    error = None
    try:
        vpd.check_same_kept(vp.KeptVocab.from_counts(counts, vocab_size=10))  # each its own
    except vp.MismatchError as exc:
        error = str(exc)
    result = {
        "rank": rank,
        "summed": summed.tolist(),
        "maxed": maxed.tolist(),
        "kept": kept.kept_ids.tolist(),
        "digests": vpd.check_same_kept(kept),
        "error": error,
    }
    gathered = [None, None]
    import torch.distributed as dist

    dist.all_gather_object(gathered, result)
    return {"different_data": gathered}


if __name__ == "__main__":
    out, args = sys.argv[1], sys.argv[2:]
    for name, extra in (("pruned", []), ("full", ["--no-prune"])):
        code = main(["finetune", *args, "--out", f"{out}/{name}", *extra])
        if code:
            sys.exit(code)
    report = different_data()
    if vpd.rank() == 0:
        print(json.dumps(report))
