"""One exception family so the command line can print one clear line and exit non-zero."""

from __future__ import annotations


class VocabPruneError(Exception):
    """Base class: the message names the problem (token, file, model) in one line."""


class ScanError(VocabPruneError):
    """Data could not be read or counted: empty data, missing column, unreadable file."""


class UnknownTokenError(VocabPruneError):
    """An id outside the kept vocabulary was fed to a pruned model."""


class MismatchError(VocabPruneError):
    """A kept vocabulary, checkpoint or file was made for another tokenizer or model."""


class UnsupportedModelError(VocabPruneError):
    """The model's embeddings or heads are not of a kind vocabprune can prune."""
