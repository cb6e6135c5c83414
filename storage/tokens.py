"""The words of a memory, as the full-text index sees them.

Every indexed word is prefixed with its scope's tag (eight letters and
digits, see `Scope.token`), so each scope has its own terms in the FTS5 index: a
search touches only that scope's postings, costs what the scope's size
costs whatever else is stored, and cannot match another scope's memories
even by mistake. Documents and queries go through the same function here,
so they always agree on what a word is.

English words are stemmed (Snowball's English stemmer), so "moved" finds
"move" and "adopting" finds "adopted"; words with other letters or digits
are kept as they are.
"""

from __future__ import annotations

import re
import threading
import unicodedata

import Stemmer

from storage.scope import Scope

MAX_WORD_CHARS = 64
# Letters and digits only: the characters FTS5's unicode61 tokenizer also
# keeps inside a token, so a prefixed word always stays one token. The group
# keeps a word's first MAX_WORD_CHARS characters and the rest of it is skipped.
_WORD = re.compile(rf"([^\W_]{{1,{MAX_WORD_CHARS}}})[^\W_]*")
# The same on casefolded ASCII text (most chat), where it is exactly [a-z0-9] and much faster.
_ASCII_WORD = re.compile(rf"([a-z0-9]{{1,{MAX_WORD_CHARS}}})[a-z0-9]*")
# Deletes every combining mark: after NFKD, that is what takes accents off.
_DROP_COMBINING = {cp: None for cp in range(0x110000) if unicodedata.combining(chr(cp))}


def words(text: str) -> list[str]:
    """Casefolded, accent-free words of `text` (each cut to MAX_WORD_CHARS), in order."""
    folded = text.casefold()
    if folded.isascii():
        return _ASCII_WORD.findall(folded)
    folded = unicodedata.normalize("NFKD", folded).translate(_DROP_COMBINING)
    return _WORD.findall(folded)


# Words too common to say anything about what a memory is about. They are
# neither indexed nor searched for.
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    im ive id ill youre dont doesnt didnt cant wont isnt arent wasnt hey hi hello yeah yes ok okay
    lol please thanks thank really just like also get got know think want tell say said
    """.split()
)


# Small numbers say as little as filler words; one set lookup drops both.
_NOT_SEARCHABLE = STOPWORDS | {str(n) for n in range(10)} | {f"{n:02d}" for n in range(100)}


def is_searchable(word: str) -> bool:
    """Whether a word is worth indexing and searching for: not filler, not a lone letter or a small number."""
    return len(word) > 1 and word not in _NOT_SEARCHABLE


# Stems already worked out, shared by every thread; emptied when it grows past this many words.
STEM_CACHE_WORDS = 200_000
_stems: dict[str, str] = {}
# A Snowball stemmer may not be used by two threads at once: each thread gets its own.
_stemmers = threading.local()


def stem(word: str) -> str:
    """The English stem of a plain ASCII word (`adopted` -> `adopt`); any other word unchanged."""
    found = _stems.get(word)
    if found is not None:
        return found
    if word.isascii() and word.isalpha():
        stemmer = getattr(_stemmers, "english", None)
        if stemmer is None:
            stemmer = _stemmers.english = Stemmer.Stemmer("english")
        found = stemmer.stemWord(word)
    else:
        found = word
    if len(_stems) >= STEM_CACHE_WORDS:
        _stems.clear()
    _stems[word] = found
    return found


def terms(text: str) -> list[str]:
    """The searchable words of `text`, stemmed, in order (repeats kept): what is indexed and searched."""
    # is_searchable, inlined: this runs for every word of every memory a rebuild replays.
    get = _stems.get
    return [get(word) or stem(word) for word in words(text) if len(word) > 1 and word not in _NOT_SEARCHABLE]


def scoped_term(scope: Scope, term: str) -> str:
    return scope.token + term


def index_text(scope: Scope, text: str) -> str:
    """What the FTS index stores for one field of a memory: its terms, each prefixed with the scope.

    Only words a search can ask for are indexed: filler words would cost
    index space and write time (about half of chat's words) for nothing.
    """
    found = terms(text)
    if not found:
        return ""
    prefix = scope.token
    return prefix + (" " + prefix).join(found)
