"""The fast tokenizer paths give exactly the words of the plain definition."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from storage import tokens
from storage.scope import Scope

SCOPE = Scope.for_guild(1000, 10)
_PLAIN_WORD = re.compile(r"[^\W_]+")


def plain_words(text: str) -> list[str]:
    """The definition: casefold, strip accents, letters-and-digits runs, each cut to 64 characters."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return [word[: tokens.MAX_WORD_CHARS] for word in _PLAIN_WORD.findall(folded)]


# Plain ASCII chat, accents and combining marks, other scripts, ligatures and case oddities,
# digits of other systems, zero-width and private characters, and words past 64 characters.
pieces = st.sampled_from(
    list("abcXYZ019_ -.,!?'\"\t\n") + list("ÀéüßÆøĲﬁǅİıΣσςКк中文٣²½\u0301\u200b😀Å\ue000") + ["a" * 70, "É" * 66]
)
chat_text = st.lists(pieces, max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(chat_text)
def test_words_match_the_plain_definition(text):
    assert tokens.words(text) == plain_words(text)


@settings(max_examples=200, deadline=None)
@given(chat_text)
def test_index_text_prefixes_the_stemmed_searchable_words(text):
    found = [tokens.stem(word) for word in plain_words(text) if tokens.is_searchable(word)]
    expected = " ".join(SCOPE.token + word for word in found)
    assert tokens.index_text(SCOPE, text) == expected


def test_filler_words_and_small_numbers_are_not_indexed():
    indexed = tokens.index_text(SCOPE, "I think the 2 of us should visit Lisbon in 2027")
    assert indexed.split() == [SCOPE.token + word for word in ("us", "visit", "lisbon", "2027")]


def test_english_words_are_stemmed_and_others_kept():
    assert tokens.terms("Moved, moving, moves: adopted adoption") == ["move", "move", "move", "adopt", "adopt"]
    assert tokens.terms("Größenwahn café 3pm") == ["grossenwahn", "cafe", "3pm"]
    assert tokens.terms("東京 Москва") == ["東京", "москва"]
