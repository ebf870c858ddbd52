"""Language-model training pieces: collators for causal and masked LM objectives (in original
ids; the pruned model or a RemapCollator maps them), and the held-out loss of a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vocabprune.core.errors import VocabPruneError


class CausalLMCollator:
    """Right-pad `input_ids`; labels are the inputs with -100 at padding (found by length, so a
    pad id equal to eos, as in SmolLM2, is fine). Original ids: wrap in RemapCollator."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class MaskedLMCollator:
    """BERT masking (15%: 80% mask token, 10% a random id, 10% unchanged), seeded.

    Features that carry a "mask_seed" are masked from their own generator (the same mask every
    time the example is drawn, whatever else ran before: a run resumed from a checkpoint trains
    exactly what the uninterrupted run trains); the others from the collator's generator.
    Random replacements are drawn from `candidates` (the kept non-special ids), never from the
    whole vocabulary: a random id outside the kept vocabulary would have no row to read.
    """

    def __init__(
        self,
        tokenizer: Any,
        candidates: Sequence[int],
        *,
        probability: float = 0.15,
        seed: int = 0,
    ) -> None:
        if tokenizer.mask_token_id is None:
            raise VocabPruneError("masked-lm needs a tokenizer with a mask token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.mask_id = int(tokenizer.mask_token_id)
        self.special = torch.as_tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.candidates = torch.as_tensor(list(candidates), dtype=torch.long)
        self.probability = probability
        self.generator = torch.Generator().manual_seed(seed)

    def _draws(self, features: list[dict[str, Any]], shape: tuple[int, int]) -> tuple:
        """(chosen-position draws, 80/10/10 rolls, random replacement ids), row by row."""
        chosen = torch.empty(shape)
        roll = torch.empty(shape)
        picks = torch.empty(shape, dtype=torch.long)
        for row, feature in enumerate(features):
            seed = feature.get("mask_seed")
            g = self.generator if seed is None else torch.Generator().manual_seed(int(seed))
            chosen[row] = torch.rand(shape[1], generator=g)
            roll[row] = torch.rand(shape[1], generator=g)
            picks[row] = torch.randint(len(self.candidates), (shape[1],), generator=g)
        return chosen, roll, self.candidates[picks]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = CausalLMCollator(self.pad_id)(features)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        draws, roll, picks = self._draws(features, tuple(ids.shape))
        eligible = (mask == 1) & ~torch.isin(ids, self.special)
        chosen = (draws < self.probability) & eligible
        labels = ids.masked_fill(~chosen, -100)
        to_mask = chosen & (roll < 0.8)
        to_random = chosen & (roll >= 0.8) & (roll < 0.9)
        ids = torch.where(to_mask, torch.full_like(ids, self.mask_id), ids)
        ids = torch.where(to_random, picks, ids)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def heldout_nll(
    model: Any, batches: Sequence[dict[str, torch.Tensor]], *, causal: bool
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and the number of predicted tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        labels = batch["labels"].to(device)
        logits = model(**inputs).logits.float()
        if causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += int((labels != -100).sum())
    model.train(was_training)
    return total, count
