"""The embedded default every command falls back to: the packaged MiniLM (SmolLM2 for causal
language modelling) and BBC News, all from PyPI packages."""

from __future__ import annotations


def default_model(task: str = "classification") -> str:
    """The model folder a task uses when --model is not given."""
    from vocabprune.fixtures import minilm_path, smollm2_path

    return str(smollm2_path() if task == "causal-lm" else minilm_path())


def default_data() -> list[str]:
    """BBC News (2,225 articles in 5 labelled folders)."""
    from vocabprune.fixtures import bbc_news_dir

    return [str(bbc_news_dir())]
