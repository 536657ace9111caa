#!/usr/bin/env python3
"""Write a folder of text whose tokens an English-first model has rarely seen, for ``CPT_TEXT_DIR``.

Where the embedding learning rate matters most is text in rare tokens: each row of embed_tokens that
such text uses has had little training, and only the embedding update can move it. This takes the
translated messages of gettext catalogues (``.mo`` files; by default Vim's Russian, Japanese and
Korean ones, which Debian's vim package installs) and writes them as plain ``.txt`` documents, a fixed
number of messages each, in a stable order:

    python benchmarks/rare_text.py OUT_DIR                       # Vim's ru / ja / ko messages
    python benchmarks/rare_text.py OUT_DIR --mo a.mo b.mo --per-document 30

Then ``CPT_TEXT_DIR=OUT_DIR`` trains on it (every tenth document is held out for perplexity), e.g.
``python benchmarks/quality_gate.py --text-dir OUT_DIR --embedding-dtypes float32,bfloat16``.
Prints the number of documents and characters written.
"""

from __future__ import annotations

import argparse
import gettext
import sys
from pathlib import Path

VIM_LANG = Path("/usr/share/vim")
DEFAULT_LANGUAGES = ("ru", "ja", "ko")


def default_catalogues() -> list[Path]:
    """Return Vim's message catalogues for :data:`DEFAULT_LANGUAGES` that exist on this machine."""
    found = []
    for language in DEFAULT_LANGUAGES:
        found += sorted(VIM_LANG.glob(f"vim*/lang/{language}/LC_MESSAGES/vim.mo"))
    return found


def messages_of(catalogue: Path) -> list[str]:
    """Return the translated messages of one ``.mo`` file, stripped, empty ones and the header left out,
    in the order of their English keys (stable across runs)."""
    with open(catalogue, "rb") as f:
        translations = gettext.GNUTranslations(f)
    catalog = translations._catalog  # the parsed {msgid: msgstr} table
    texts = []
    for key in sorted(catalog, key=str):
        value = catalog[key]
        if key and isinstance(value, str) and value.strip():
            texts.append(" ".join(value.split()))
    return texts


def write_documents(messages: list[str], out_dir: Path, per_document: int) -> tuple[int, int]:
    """Write ``messages`` as ``doc-NNNN.txt`` files of ``per_document`` lines each; return
    ``(documents, characters)``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    documents = characters = 0
    for start in range(0, len(messages), per_document):
        text = "\n".join(messages[start:start + per_document]) + "\n"
        (out_dir / f"doc-{documents:04d}.txt").write_text(text, encoding="utf-8")
        documents += 1
        characters += len(text)
    return documents, characters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--mo", type=Path, nargs="*", help="gettext .mo files (default: Vim's ru, ja, ko)")
    p.add_argument("--per-document", type=int, default=20, help="messages per document (default 20)")
    args = p.parse_args(argv)
    catalogues = args.mo or default_catalogues()
    if not catalogues:
        p.error(f"no .mo files given and none of Vim's ({', '.join(DEFAULT_LANGUAGES)}) under {VIM_LANG}: "
                "install vim (apt-get install vim) or pass --mo FILE ...")
    if args.per_document < 1:
        p.error("--per-document must be at least 1")
    messages = [m for catalogue in catalogues for m in messages_of(catalogue)]
    documents, characters = write_documents(messages, args.out_dir, args.per_document)
    print(f"{documents} documents, {characters:,} characters from {len(catalogues)} catalogue(s) -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
