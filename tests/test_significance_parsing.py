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
