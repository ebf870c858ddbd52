"""vocabprune: fine-tune with only the embedding rows your data uses, then restore a full model.

kept = vocabprune.build_kept_vocab(tokenizer, train_texts, eval_texts, model=model)
vocabprune.prune(model, kept)                  # swap in the kept rows, in place
collator = vocabprune.RemapCollator(DataCollatorWithPadding(tokenizer), kept)
...train...                                    # saves taken now are full-vocabulary
vocabprune.restore(model)                      # an ordinary full model again
"""

from vocabprune.decay import track_weight_decay
from vocabprune.errors import (
    MismatchError,
    ScanError,
    UnknownTokenError,
    UnsupportedModelError,
    VocabPruneError,
)
from vocabprune.generation import generate
from vocabprune.inference import load_compact
from vocabprune.lazy_load import load_pruned
from vocabprune.prune import prune, pruned
from vocabprune.remap import IdRemapper, RemapCollator, remap_dataset
from vocabprune.restore import restore
from vocabprune.scan import ScanResult, build_kept_vocab, count_texts, count_token_ids, scan
from vocabprune.state import get_state, is_pruned
from vocabprune.vocab import KeptVocab

__version__ = "0.1.0"

__all__ = [
    "IdRemapper",
    "KeptVocab",
    "MismatchError",
    "RemapCollator",
    "ScanError",
    "ScanResult",
    "UnknownTokenError",
    "UnsupportedModelError",
    "VocabPruneError",
    "build_kept_vocab",
    "count_texts",
    "count_token_ids",
    "generate",
    "get_state",
    "is_pruned",
    "load_compact",
    "load_pruned",
    "prune",
    "pruned",
    "remap_dataset",
    "restore",
    "scan",
    "track_weight_decay",
]
