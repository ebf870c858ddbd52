"""Tiny, randomly initialised models of the encoder families vocabprune supports (no Hub access).

`build(family, head)` returns a `Tiny`: the model (eval mode, seeded) and the special ids a real
tokenizer of that family would use. Heads: "cls" (sequence classification, 3 labels), "mlm"
(masked LM, decoder tied to the input embedding) and "mlm-untied" (tie_word_embeddings=False).
Every family has all three heads here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AlbertConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    MPNetConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

FAMILIES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta-v2",
    "modernbert",
    "mpnet",
)
HEADS = ("cls", "mlm", "mlm-untied")
NUM_LABELS = 3
HIDDEN = 32
LAYERS = 2
HEADS_ATTN = 4
INTERMEDIATE = 64
MAX_POSITIONS = 64


@dataclass(frozen=True)
class Spec:
    """How a family numbers its vocabulary: size and the special ids a tokenizer would use."""

    vocab_size: int
    pad: int
    specials: dict[str, int]  # name -> id (cls/sep/unk/mask/bos/eos as the family has them)
    # The smallest id ordinary text can use (everything below is special or reserved).
    first_text_id: int
    # Ids that can never appear as text (specials above the text range, padded rows).
    reserved: tuple[int, ...] = field(default=())


def _bert_like(vocab: int) -> Spec:
    # [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103 as in bert-base-uncased.
    return Spec(
        vocab,
        pad=0,
        specials={"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103},
        first_text_id=1,
        reserved=(100, 101, 102, 103),
    )


def _roberta_like(vocab: int) -> Spec:
    # <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=last, as in roberta-base / xlm-roberta / mpnet.
    return Spec(
        vocab,
        pad=1,
        specials={"bos": 0, "cls": 0, "pad": 1, "eos": 2, "sep": 2, "unk": 3, "mask": vocab - 1},
        first_text_id=4,
        reserved=(vocab - 1,),
    )


SPECS: dict[str, Spec] = {
    "bert": _bert_like(400),
    "roberta": _roberta_like(350),
    "xlm-roberta": _roberta_like(420),
    "distilbert": _bert_like(310),
    # <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4 as in albert-base-v2.
    "albert": Spec(
        330,
        pad=0,
        specials={"pad": 0, "unk": 1, "cls": 2, "bos": 2, "sep": 3, "eos": 3, "mask": 4},
        first_text_id=5,
    ),
    "electra": _bert_like(370),
    # [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK]=last, as in deberta-v3.
    "deberta-v2": Spec(
        390,
        pad=0,
        specials={"pad": 0, "cls": 1, "sep": 2, "unk": 3, "mask": 389},
        first_text_id=4,
        reserved=(389,),
    ),
    # ModernBERT: specials near the top and a padded vocabulary (rows 385..399 are never used),
    # like answerdotai/ModernBERT-base ([UNK]=50280, [CLS]=50281, [SEP]=50282, [PAD]=50283,
    # [MASK]=50284 of 50368 rows).
    "modernbert": Spec(
        400,
        pad=383,
        specials={
            "unk": 380,
            "cls": 381,
            "bos": 381,
            "sep": 382,
            "eos": 382,
            "pad": 383,
            "mask": 384,
        },
        first_text_id=0,
        reserved=tuple(range(380, 400)),
    ),
    "mpnet": _roberta_like(360),
}


def _config(family: str, head: str) -> Any:
    spec = SPECS[family]
    s = spec.specials
    tie = head != "mlm-untied"
    common: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "pad_token_id": spec.pad,
        "tie_word_embeddings": tie,
        "num_labels": NUM_LABELS,
    }
    bert_args: dict[str, Any] = {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS_ATTN,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
    }
    if family == "bert":
        return BertConfig(**common, **bert_args, type_vocab_size=2)
    if family in ("roberta", "xlm-roberta"):
        cls = RobertaConfig if family == "roberta" else XLMRobertaConfig
        # RoBERTa positions start after the pad id: max_position_embeddings = n + pad + 1.
        return cls(
            **common,
            **{**bert_args, "max_position_embeddings": MAX_POSITIONS + spec.pad + 1},
            bos_token_id=s["bos"],
            eos_token_id=s["eos"],
            type_vocab_size=1,
        )
    if family == "distilbert":
        return DistilBertConfig(
            **common,
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=HEADS_ATTN,
            hidden_dim=INTERMEDIATE,
            max_position_embeddings=MAX_POSITIONS,
        )
    if family == "albert":
        return AlbertConfig(
            **common,
            **bert_args,
            embedding_size=16,
            num_hidden_groups=1,
            # albert-base-v2 trains without dropout; switch it on so training checks see it.
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            bos_token_id=s["bos"],
            eos_token_id=s["eos"],
        )
    if family == "electra":
        return ElectraConfig(**common, **bert_args, embedding_size=16)
    if family == "deberta-v2":
        return DebertaV2Config(
            **common,
            **bert_args,
            relative_attention=True,
            position_buckets=16,
            max_relative_positions=-1,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            type_vocab_size=0,
        )
    if family == "modernbert":
        return ModernBertConfig(
            **common,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS_ATTN,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_POSITIONS,
            local_attention=16,
            bos_token_id=s["bos"],
            eos_token_id=s["eos"],
            cls_token_id=s["cls"],
            sep_token_id=s["sep"],
            # Dropout everywhere, so training checks see it (ModernBERT defaults to none).
            embedding_dropout=0.1,
            mlp_dropout=0.1,
            attention_dropout=0.1,
            attn_implementation="eager",
        )
    if family == "mpnet":
        return MPNetConfig(
            **common,
            **{**bert_args, "max_position_embeddings": MAX_POSITIONS + spec.pad + 1},
            bos_token_id=s["bos"],
            eos_token_id=s["eos"],
        )
    raise KeyError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")


@dataclass
class Tiny:
    family: str
    head: str
    model: Any
    spec: Spec

    @property
    def tied(self) -> bool:
        return self.head == "mlm"

    @property
    def special_ids(self) -> list[int]:
        return sorted(set(self.spec.specials.values()))

    @property
    def text_ids(self) -> list[int]:
        """Ids ordinary text may contain (no specials, no padded rows)."""
        banned = set(self.spec.specials.values()) | set(self.spec.reserved)
        lo = self.spec.first_text_id
        return [i for i in range(lo, self.spec.vocab_size) if i not in banned]


def build(family: str, head: str = "cls", *, seed: int = 0) -> Tiny:
    """A tiny randomly initialised model of `family` with the given head, in eval mode."""
    if head not in HEADS:
        raise KeyError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    config = _config(family, head)
    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if head == "cls" else AutoModelForMaskedLM
    model = auto.from_config(config)
    model.eval()
    return Tiny(family=family, head=head, model=model, spec=SPECS[family])
