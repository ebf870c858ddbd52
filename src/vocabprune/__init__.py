"""vocabprune: fine-tune with only the embedding rows your data uses, then restore a full model.

kept = vocabprune.build_kept_vocab(tokenizer, train_texts, eval_texts, model=model)
vocabprune.prune(model, kept)      # kept rows only, in place; the model still reads tokenizer ids
...train as you would...           # Trainer, sentence-transformers, TRL, a plain loop
vocabprune.restore(model)          # an ordinary full model again
"""

from typing import Any

from vocabprune.core.errors import (
    MismatchError,
    ScanError,
    UnknownTokenError,
    UnsupportedModelError,
    VocabPruneError,
)
from vocabprune.core.hooks import column_ids
from vocabprune.core.ids import IdRemapper
from vocabprune.core.load_pruned import load_pruned
from vocabprune.core.prune import prune, pruned
from vocabprune.core.remap import RemapCollator, remap_dataset
from vocabprune.core.restore import restore
from vocabprune.core.state import get_state, is_pruned
from vocabprune.core.vocab import KeptVocab
from vocabprune.data.counts import Counts, load_counts, merge_counts, save_counts
from vocabprune.data.scan import (
    ScanResult,
    build_kept_vocab,
    count_shard,
    count_texts,
    count_token_ids,
    scan,
)
from vocabprune.deploy.compact import compact_pipeline, load_compact
from vocabprune.deploy.onnx import export_onnx
from vocabprune.train.chunked import chunked_loss
from vocabprune.train.decay import track_weight_decay
from vocabprune.train.generation import generate

__version__ = "0.1.0"

# Imported on first use: they pull in transformers' Trainer.
_LAZY = {
    "VocabPruneCallback": "vocabprune.train.callback",
    "check_resume": "vocabprune.train.callback",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vocabprune' has no attribute {name!r}")


__all__ = [
    "Counts",
    "IdRemapper",
    "KeptVocab",
    "MismatchError",
    "RemapCollator",
    "ScanError",
    "ScanResult",
    "UnknownTokenError",
    "UnsupportedModelError",
    "VocabPruneCallback",
    "VocabPruneError",
    "build_kept_vocab",
    "check_resume",
    "chunked_loss",
    "column_ids",
    "compact_pipeline",
    "count_shard",
    "count_texts",
    "count_token_ids",
    "export_onnx",
    "generate",
    "get_state",
    "is_pruned",
    "load_compact",
    "load_counts",
    "load_pruned",
    "merge_counts",
    "prune",
    "pruned",
    "remap_dataset",
    "restore",
    "save_counts",
    "scan",
    "track_weight_decay",
]
