"""vocabprune: fine-tune with only the embedding rows your data uses, then restore a full model.

kept = vocabprune.build_kept_vocab(tokenizer, train_texts, eval_texts, model=model)
vocabprune.prune(model, kept)      # kept rows only, in place; the model still reads tokenizer ids
...train as you would...           # Trainer, sentence-transformers, TRL, a plain loop
vocabprune.restore(model)          # an ordinary full model again
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Every public name, imported from its layer on first use: `import vocabprune` (and the command
# line, which validates its options before any work) stays light; torch and transformers load
# when the first function that needs them is used.
_LAZY = {
    **dict.fromkeys(
        ("MismatchError", "ScanError", "UnknownTokenError", "UnsupportedModelError"),
        "vocabprune.core.errors",
    ),
    "VocabPruneError": "vocabprune.core.errors",
    "column_ids": "vocabprune.core.hooks",
    "IdRemapper": "vocabprune.core.ids",
    "load_pruned": "vocabprune.core.load_pruned",
    "prune": "vocabprune.core.prune",
    "pruned": "vocabprune.core.prune",
    "RemapCollator": "vocabprune.core.remap",
    "remap_dataset": "vocabprune.core.remap",
    "restore": "vocabprune.core.restore",
    "get_state": "vocabprune.core.state",
    "is_pruned": "vocabprune.core.state",
    "KeptVocab": "vocabprune.core.vocab",
    **dict.fromkeys(
        ("Counts", "load_counts", "merge_counts", "save_counts"), "vocabprune.data.counts"
    ),
    **dict.fromkeys(
        ("ScanResult", "build_kept_vocab", "count_shard", "count_texts", "count_token_ids", "scan"),
        "vocabprune.data.scan",
    ),
    "compact_pipeline": "vocabprune.deploy.compact",
    "load_compact": "vocabprune.deploy.compact",
    "export_onnx": "vocabprune.deploy.onnx",
    "chunked_loss": "vocabprune.train.chunked",
    "track_weight_decay": "vocabprune.train.decay",
    "generate": "vocabprune.train.generation",
    "VocabPruneCallback": "vocabprune.train.callback",
    "check_resume": "vocabprune.train.callback",
}

if TYPE_CHECKING:  # the names as static tools see them
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
    from vocabprune.train.callback import VocabPruneCallback, check_resume
    from vocabprune.train.chunked import chunked_loss
    from vocabprune.train.decay import track_weight_decay
    from vocabprune.train.generation import generate


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'vocabprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
