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


# -- the families users fine-tune (tests/test_families.py) ----------------------------------------
#
# One entry per family: a builder from a tiny config and the kind of batch it reads. Adding a
# family is adding one entry. Token ids sit where real tokenizers put them: specials away from 0
# (so a kept vocabulary renumbers them) and modality ids (image, video, ...) at the top.

FV = 512  # vocabulary size of the family zoo
FH = 32  # hidden size


def _text(**kw: Any) -> dict[str, Any]:
    """A one-layer decoder text config (Llama-style keys every decoder family reads)."""
    base = {
        "hidden_size": FH,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 128,
        "vocab_size": FV,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
    }
    return {**base, **kw}


def _vision(**kw: Any) -> dict[str, Any]:
    base = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
    }
    return {**base, **kw}


def _encoder_decoder(**kw: Any) -> dict[str, Any]:
    base = {
        "vocab_size": FV,
        "d_model": FH,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 64,
    }
    return {**base, **kw}


def _gemma3_vlm() -> Any:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    cfg = Gemma3Config(
        text_config=_text(num_key_value_heads=1, sliding_window=16),
        vision_config=_vision(),
        mm_tokens_per_image=4,
        image_token_index=FV - 4,
        boi_token_index=FV - 3,
        eoi_token_index=FV - 2,
    )
    return Gemma3ForConditionalGeneration(cfg)


def _paligemma() -> Any:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    text = _text(model_type="gemma", num_key_value_heads=1)
    cfg = PaliGemmaConfig(
        text_config=text,
        vision_config=_vision(projection_dim=FH),
        image_token_index=FV - 4,
        projection_dim=FH,
        hidden_size=FH,
    )
    return PaliGemmaForConditionalGeneration(cfg)


def _qwen2_vl() -> Any:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = _text(rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}, head_dim=None)
    text.pop("head_dim")
    cfg = Qwen2VLConfig(
        text_config=text,
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": FH, "num_heads": 2},
        image_token_id=FV - 5,
        video_token_id=FV - 4,
        vision_start_token_id=FV - 3,
        vision_end_token_id=FV - 2,
        tie_word_embeddings=False,
    )
    return Qwen2VLForConditionalGeneration(cfg)


def _llava() -> Any:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(
        text_config=_text(model_type="llama"),
        vision_config=_vision(model_type="clip_vision_model"),
        image_token_index=FV - 4,
    )
    return LlavaForConditionalGeneration(cfg)


def _whisper() -> Any:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    # Whisper: <|endoftext|> (eos, pad) and <|startoftranscript|> at the top, as in the real one.
    cfg = WhisperConfig(
        **{k: v for k, v in _encoder_decoder().items() if k != "max_position_embeddings"},
        num_mel_bins=8,
        max_source_positions=8,
        max_target_positions=32,
        pad_token_id=FV - 3,
        bos_token_id=FV - 3,
        eos_token_id=FV - 3,
        decoder_start_token_id=FV - 2,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    return WhisperForConditionalGeneration(cfg)


def _marian(share: bool) -> Any:
    from transformers import MarianConfig, MarianMTModel

    # Marian: </s>=0, <unk>=1, <pad>=last (also the decoder start), as opus-mt models number them.
    cfg = MarianConfig(
        **_encoder_decoder(),
        pad_token_id=FV - 1,
        eos_token_id=0,
        decoder_start_token_id=FV - 1,
        share_encoder_decoder_embeddings=share,
    )
    return MarianMTModel(cfg)


def _m2m100() -> Any:
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    # NLLB/M2M-style: <s>=0 <pad>=1 </s>=2 <unk>=3, language codes at the top (forced bos).
    cfg = M2M100Config(
        **_encoder_decoder(),
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        scale_embedding=True,
    )
    return M2M100ForConditionalGeneration(cfg)


def _mixtral() -> Any:
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**_text(num_local_experts=4, num_experts_per_tok=2)))


def _cohere() -> Any:
    from transformers import CohereConfig, CohereForCausalLM

    return CohereForCausalLM(
        CohereConfig(**_text(logit_scale=0.25, bos_token_id=5, eos_token_id=6))
    )


def _granite() -> Any:
    from transformers import GraniteConfig, GraniteForCausalLM

    cfg = GraniteConfig(**_text(logits_scaling=4.0, embedding_multiplier=2.0))
    return GraniteForCausalLM(cfg)


def _mamba() -> Any:
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(
        vocab_size=FV,
        hidden_size=FH,
        state_size=4,
        num_hidden_layers=1,
        expand=2,
        conv_kernel=2,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        use_mambapy=True,
    )
    return MambaForCausalLM(cfg)


def _bert_task(head: str) -> Any:
    from transformers import BertForQuestionAnswering, BertForTokenClassification

    cfg = BertConfig(
        vocab_size=FV,
        hidden_size=FH,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=NUM_LABELS if head == "tokens" else 2,  # spans: start and end logits
    )
    cls = BertForTokenClassification if head == "tokens" else BertForQuestionAnswering
    return cls(cfg)


@dataclass(frozen=True)
class Family:
    """A family users fine-tune. kind: the batch it reads and its objective —
    "causal" (next token), "seq2seq" (source ids -> target labels), "speech" (audio features ->
    target labels), "tokens" (a label per token), "spans" (start/end positions)."""

    name: str
    make: Any  # () -> model
    kind: str
    specials: tuple[int, ...]  # ids a tokenizer of the family keeps (config ids come from model=)
    group: str
    config_ids: tuple[int, ...] = ()  # ids only the config names (image, decoder start, ...)

    @property
    def generative(self) -> bool:
        return self.kind in ("causal", "seq2seq", "speech")

    def build(self, seed: int = 0) -> Any:
        torch.manual_seed(seed)
        model = self.make()
        model.eval()
        return model


ZOO = (
    Family(
        "gemma3-vlm",
        _gemma3_vlm,
        "causal",
        (0, 1, 2),
        "vision-language (tied)",
        (FV - 4, FV - 3, FV - 2),
    ),
    Family("paligemma", _paligemma, "causal", (0, 1, 2), "vision-language (tied)", (FV - 4,)),
    Family(
        "qwen2-vl",
        _qwen2_vl,
        "causal",
        (0, 1, 2),
        "vision-language (untied)",
        tuple(range(FV - 5, FV - 1)),
    ),
    Family("llava", _llava, "causal", (0, 1, 2), "vision-language (untied)", (FV - 4,)),
    Family("whisper", _whisper, "speech", (), "speech", (FV - 3, FV - 2)),
    Family("marian", lambda: _marian(True), "seq2seq", (0, 1), "translation (shared)"),
    Family("marian-separate", lambda: _marian(False), "seq2seq", (0, 1), "translation (separate)"),
    Family("m2m100", _m2m100, "seq2seq", (0, 1, 2, 3, FV - 3, FV - 2), "translation (shared)"),
    Family("mixtral", _mixtral, "causal", (0, 1, 2), "MoE"),
    Family("cohere", _cohere, "causal", (0, 5, 6), "logit scaling"),
    Family("granite", _granite, "causal", (0, 1, 2), "logit scaling"),
    Family("mamba", _mamba, "causal", (0, 1, 2), "state-space"),
    Family("bert-tokens", lambda: _bert_task("tokens"), "tokens", (0, 100, 101, 102), "encoder"),
    Family("bert-spans", lambda: _bert_task("spans"), "spans", (0, 100, 101, 102), "encoder"),
)


def family(name: str) -> Family:
    for entry in ZOO:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown family {name!r}; choose one of {', '.join(f.name for f in ZOO)}")
