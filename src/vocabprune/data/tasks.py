"""How each task encodes its examples: one rule, shared by `analyze --task`, `scan(task=...)` and
the `finetune` jobs, so a kept vocabulary counted by one covers every id the other trains on.

- classification: a pair is one input (`tokenizer(texts, pairs)`, truncated together);
- masked-lm, causal-lm: a pair is one text, joined by a newline;
- seq2seq: source and target, each encoded alone (the target as labels);
- sentence-embedding: each column encoded alone (the model embeds every text by itself); a text
  with no pair is split into its title line and body (news articles).

Every task truncates to the same default length, `DEFAULT_MAX_LENGTH`.
"""

from __future__ import annotations

from collections.abc import Sequence

from vocabprune.core.errors import ScanError
from vocabprune.data.sources import Examples

TASKS = ("classification", "masked-lm", "causal-lm", "seq2seq", "sentence-embedding")
DEFAULT_MAX_LENGTH = 128
# Tasks whose model reads each text of a pair by itself.
SEPARATE = ("seq2seq", "sentence-embedding")


def task_examples(examples: Examples, task: str, source: str = "the data") -> Examples:
    """The examples shaped as `task` reads them (rows stay aligned with their labels)."""
    if task not in TASKS:
        raise ScanError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task in ("masked-lm", "causal-lm"):
        return Examples(examples.joined(), None, examples.labels)
    if task == "sentence-embedding":
        return examples.title_body(source)
    if task == "seq2seq" and examples.pairs is None:
        raise ScanError(
            f"{source}: --task seq2seq reads (source, target) pairs: --text-column source,target"
        )
    return examples


def task_texts(
    texts: Sequence[str], pairs: Sequence[str] | None, task: str, source: str = "the data"
) -> tuple[list[str], list[str] | None]:
    """The arguments of the tokenizer call whose ids `task` counts: (texts, pairs), pairs None
    when every text is encoded alone (the second texts then follow the first ones)."""
    shaped = task_examples(Examples(list(texts), None if pairs is None else list(pairs), None),
                           task, source)  # fmt: skip
    if task in SEPARATE and shaped.pairs is not None:
        return shaped.texts + shaped.pairs, None
    return shaped.texts, shaped.pairs
