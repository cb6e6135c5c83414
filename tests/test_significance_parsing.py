import pytest

from companion.significance import UnusableAnswer, parse_significance


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("3", 3),
        (" 0\n", 0),
        ('{"significance": 2}', 2),
        ('{"score": 1}', 1),
        ("2.", 2),
        ("**3**", 3),
        ("Significance: 1", 1),
        ("2.0", 2),
    ],
)
def test_readable_answers(answer, expected):
    assert parse_significance(answer) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "pivotal",
        "4",
        "-1",
        "2.5",
        "between 2 and 3",
        '{"significance": "high"}',
        '{"significance": 7}',
        '{"other": 1}',
        "true",
        '{"significance": true}',
    ],
)
def test_unusable_answers_are_refused_not_guessed(answer):
    with pytest.raises(UnusableAnswer):
        parse_significance(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Alice says her sister moved to Porto, so I'd say 2 or 3",
        '{"verdict": "Alice says her sister moved to Porto"}',
        '{"significance": "Alice says her sister moved to Porto"}',
    ],
)
def test_an_unusable_answer_is_described_without_quoting_it(answer):
    """The reason is stored in the log, where forgetting the memory would not reach it."""
    with pytest.raises(UnusableAnswer) as refused:
        parse_significance(answer)
    assert "Porto" not in str(refused.value) and "sister" not in str(refused.value)
