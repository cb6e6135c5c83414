import re

import pytest

from companion.splitting import DISCORD_MESSAGE_LIMIT, split_message


def words_of(chunks: list[str]) -> list[str]:
    return " ".join(chunks).split()


def test_short_reply_is_one_chunk():
    assert split_message("hello there") == ["hello there"]


def test_long_prose_splits_on_words_in_order_and_loses_nothing():
    text = " ".join(f"word{i}" for i in range(1200))
    chunks = split_message(text)
    assert len(chunks) > 1
    assert all(len(c) <= DISCORD_MESSAGE_LIMIT for c in chunks)
    assert words_of(chunks) == text.split()


def test_splits_prefer_line_breaks():
    lines = [f"line {i} " + "x" * 60 for i in range(100)]
    chunks = split_message("\n".join(lines))
    assert all(len(c) <= DISCORD_MESSAGE_LIMIT for c in chunks)
    rejoined = "\n".join(chunks).splitlines()
    assert rejoined == lines


def test_a_word_longer_than_the_limit_is_cut_hard_without_loss():
    text = "a" * 5000
    chunks = split_message(text)
    assert "".join(chunks) == text
    assert [len(c) for c in chunks][:2] == [1996, 1996]


def test_code_block_cut_is_closed_and_reopened():
    code = "\n".join(f"    print({i})" for i in range(400))
    text = f"Here you go:\n```python\n{code}\n```\nDone."
    chunks = split_message(text)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= DISCORD_MESSAGE_LIMIT
        assert len(re.findall(r"^```", chunk, re.MULTILINE)) % 2 == 0, chunk[-50:]
    assert chunks[1].startswith("```python\n")
    body_lines = [line for c in chunks for line in c.splitlines() if line.startswith("    print(")]
    assert body_lines == code.splitlines()


@pytest.mark.parametrize("text", ["", "\n\n", "   "])
def test_blank_reply_gives_no_chunks(text):
    assert split_message(text) == []


def test_unicode_is_counted_in_characters():
    text = "é" * 2500
    chunks = split_message(text)
    assert "".join(chunks) == text
    assert all(len(c) <= DISCORD_MESSAGE_LIMIT for c in chunks)
