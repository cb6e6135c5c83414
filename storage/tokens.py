"""The words of a memory, as the full-text index sees them.

Every indexed word is prefixed with its scope's tag (eight letters and
digits, see `Scope.token`), so each scope has its own terms in the FTS5 index: a
search touches only that scope's postings, costs what the scope's size
costs whatever else is stored, and cannot match another scope's memories
even by mistake. Documents and queries go through the same function here,
so they always agree on what a word is.
"""

from __future__ import annotations

import re
import unicodedata

from storage.scope import Scope

# Letters and digits only: the characters FTS5's unicode61 tokenizer also
# keeps inside a token, so a prefixed word always stays one token.
_WORD = re.compile(r"[^\W_]+")
MAX_WORD_CHARS = 64
# Deletes every combining mark: after NFKD, that is what takes accents off.
_DROP_COMBINING = {cp: None for cp in range(0x110000) if unicodedata.combining(chr(cp))}


def words(text: str) -> list[str]:
    """Casefolded, accent-free words of `text`, in order."""
    folded = text.casefold()
    if not folded.isascii():
        folded = unicodedata.normalize("NFKD", folded).translate(_DROP_COMBINING)
    return [word[:MAX_WORD_CHARS] for word in _WORD.findall(folded)]


def scoped_term(scope: Scope, word: str) -> str:
    return scope.token + word


def index_text(scope: Scope, *texts: str) -> str:
    """The text the FTS index stores for a memory: its words, each prefixed with the scope."""
    found = [word for text in texts for word in words(text)]
    if not found:
        return ""
    prefix = scope.token
    return prefix + (" " + prefix).join(found)
