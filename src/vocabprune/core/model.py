"""Facts about a transformers model that every layer asks: its name, its input embedding, where
the pruned-state record lives, and its full embedding shape (also while pruned)."""

from __future__ import annotations

from typing import Any

from torch import nn

from vocabprune.core.errors import UnsupportedModelError, VocabPruneError

STATE_ATTR = "_vocabprune_state"


def model_name(model: Any) -> str:
    """The name a message should use for a model: its folder, else its class."""
    return str(getattr(model, "name_or_path", "") or type(model).__name__)


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The model's input embedding, which must be an nn.Embedding (or a subclass)."""
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        raise UnsupportedModelError(
            f"model {model_name(model)!r} has no get_input_embeddings(): not a transformers model"
        )
    emb = getter()
    if not isinstance(emb, nn.Embedding):
        raise UnsupportedModelError(
            f"model {model_name(model)!r}: input embedding is {type(emb).__name__}, "
            "not an nn.Embedding; vocabprune can only prune nn.Embedding rows"
        )
    return emb


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output embeddings (LM head), None when it has none."""
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if getter is not None else None


def state_owner(model: Any) -> nn.Module | None:
    """The module carrying the pruned state: the model itself or the one module inside a wrapper
    that does (DDP, FSDP, PEFT, a SentenceTransformer); None if nothing is pruned."""
    if isinstance(model, nn.Module) and STATE_ATTR in model.__dict__:
        return model
    if not isinstance(model, nn.Module):
        return None
    found = [m for m in model.modules() if STATE_ATTR in m.__dict__]
    if len(found) > 1:
        raise VocabPruneError(
            f"{type(model).__name__} holds {len(found)} pruned models; name the one you mean"
        )
    return found[0] if found else None


def embedding_shape(model: nn.Module) -> tuple[int, int]:
    """(rows, dim) of the model's input embedding, full size even while pruned."""
    owner = state_owner(model)
    if owner is not None:
        return tuple(owner.__dict__[STATE_ATTR].full_input_shape)  # type: ignore[return-value]
    weight = input_embedding(prune_target(model)).weight
    return int(weight.shape[0]), int(weight.shape[1])


def _unwrapped(model: Any) -> Any:
    """The module a wrapper stands for: torch.compile's OptimizedModule (`_orig_mod`), a PEFT
    model (its base model), DDP / DataParallel / accelerate-style wrappers (their one `.module`)."""
    seen: set[int] = set()
    while isinstance(model, nn.Module) and id(model) not in seen:
        seen.add(id(model))
        children = model._modules
        if isinstance(children.get("_orig_mod"), nn.Module):
            model = children["_orig_mod"]
        elif hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        elif list(children) == ["module"] and isinstance(children["module"], nn.Module):
            model = children["module"]
    return model


def prune_target(model: Any) -> nn.Module:
    """The one rule that turns whatever the user hands us into the transformers model: the
    model itself; the model inside torch.compile, PEFT, DDP-style wrappers (`.module`); or the
    one transformers model a wrapper holds (a SentenceTransformer's transformer module)."""
    model = _unwrapped(model)
    if hasattr(model, "get_input_embeddings") or not isinstance(model, nn.Module):
        return model  # type: ignore[no-any-return]
    found = [(n, m) for n, m in model.named_modules() if n and hasattr(m, "get_input_embeddings")]
    outer = [(n, m) for n, m in found if not any(n.startswith(f"{o}.") for o, _ in found)]
    if not outer:
        raise UnsupportedModelError(
            f"{type(model).__name__} holds no transformers model (no module with "
            "get_input_embeddings()): nothing to prune"
        )
    if len(outer) > 1:
        names = ", ".join(f"{n} ({type(m).__name__})" for n, m in outer)
        raise UnsupportedModelError(
            f"{type(model).__name__} holds {len(outer)} transformers models ({names}); "
            "prune the one you mean"
        )
    return outer[0][1]


def wrapper_tokenizer(model: Any) -> Any:
    """The tokenizer a wrapper carries (SentenceTransformer.tokenizer), None for a bare model."""
    if hasattr(model, "get_input_embeddings"):
        return None
    return getattr(model, "tokenizer", None)
