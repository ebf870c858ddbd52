"""Sharded runs (torchrun, 2 processes, gloo on CPU): the same tiny BERT trained unpruned and
pruned, sharded with FSDP2 (`fully_shard`) or DeepSpeed ZeRO-2 / ZeRO-3, then its full state dict
gathered (the pruned one is full-vocabulary: vocabprune's hooks expand it).

    torchrun --nproc_per_node 2 tests/sharded_train.py fsdp2|zero2,zero3 OUT_DIR

Several DeepSpeed stages share one launch (one process group). For each MODE, rank 0 writes
OUT_DIR/MODE/{full,pruned}.safetensors, OUT_DIR/MODE/pruned/ (a from_pretrained folder of the
pruned run, for fsdp2) and OUT_DIR/MODE/report.json (what was refused, and how).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

import vocabprune as vp
from vocabprune.train.distributed import full_state_dict

VOCAB, STEPS = 300, 3


def build() -> tuple[BertForSequenceClassification, vp.KeptVocab]:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    counts = np.zeros(VOCAB, dtype=np.int64)
    counts[list(range(110, 150))] = 1
    return model, vp.KeptVocab.from_counts(counts, model=model, extra_ids=[0, 100, 101, 102])


def batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each rank its own data (data parallel), ids of the kept set only."""
    g = torch.Generator().manual_seed(1 + rank)
    return [
        (torch.randint(110, 150, (4, 8), generator=g), torch.randint(0, 2, (4,), generator=g))
        for _ in range(STEPS)
    ]


def train_fsdp2(model, rank: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for ids, labels in batches(rank):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return full_state_dict(model)


def train_zero(model, rank: int, stage: int, refusals: dict) -> dict:
    import deepspeed

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    for ids, labels in batches(rank):
        engine.backward(engine(input_ids=ids, labels=labels).loss)
        engine.step()
    if stage < 3:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    if vp.is_pruned(model):
        for name, call in (
            ("state_dict", model.state_dict),
            ("restore", lambda: vp.restore(model)),
        ):
            try:
                call()
                refusals[name] = None
            except vp.VocabPruneError as exc:
                refusals[name] = str(exc)
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(mode: str, out: Path) -> None:
    """Train unpruned then pruned under `mode`; rank 0 writes the gathered state dicts."""
    rank = dist.get_rank()
    report: dict = {"mode": mode, "world_size": dist.get_world_size(), "refusals": {}}
    for variant in ("full", "pruned"):
        model, kept = build()
        if variant == "pruned":
            vp.prune(model, kept)
        if mode == "fsdp2":
            sd = train_fsdp2(model, rank)
        else:
            sd = train_zero(model, rank, int(mode[-1]), report["refusals"])
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.contiguous() for k, v in sd.items()}, str(out / f"{variant}.safetensors")
            )
            if variant == "pruned" and mode == "fsdp2":  # an ordinary folder stock code loads
                fresh, _ = build()
                fresh.load_state_dict(sd)
                fresh.save_pretrained(out / "pruned")
            rows = sd["bert.embeddings.word_embeddings.weight"].shape[0]
            report[f"{variant}_embedding_rows"] = int(rows)  # FSDP2 gathers on rank 0 only
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report, indent=2))
    dist.barrier()


def main() -> None:
    modes, out = sys.argv[1].split(","), Path(sys.argv[2])
    if any(m.startswith("zero") for m in modes):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    for mode in modes:
        run(mode, out / mode)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
