"""The pin rules every backend applies, checked over random sequences of pivotal scores and manual pins."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import pin_rules
from storage.pin_rules import ManualPinLimit, Pin

AUTHORS = st.integers(min_value=1, max_value=4)
STEPS = st.lists(st.tuples(st.sampled_from(["pivotal", "manual", "member"]), AUTHORS), max_size=40)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, pin_cap=st.integers(min_value=1, max_value=8))
def test_the_cap_holds_manual_pins_stay_and_no_author_holds_more_than_half(steps, pin_cap):
    pins: list[Pin] = []
    for memory_id, (step, person) in enumerate(steps, start=1):
        manual_before = {pin.id for pin in pins if not pin.auto}
        if step == "pivotal":
            pinned, evicted = pin_rules.auto_pin(pins, memory_id, person, pin_cap)
            pins = [pin for pin in pins if pin.id not in evicted]
            if pinned:
                pins.append(Pin(memory_id, True, None, person))
        else:
            if step == "member":
                try:
                    pin_rules.check_manual_pin(pins, person, member_quota=1, pin_cap=pin_cap)
                except ManualPinLimit:
                    continue
            pins.append(Pin(memory_id, False, person, person))
            evicted = pin_rules.over_cap(pins, pin_cap, protect=memory_id)
            pins = [pin for pin in pins if pin.id not in evicted]
        autos = [pin for pin in pins if pin.auto]
        manuals = [pin for pin in pins if not pin.auto]
        assert manual_before <= {pin.id for pin in manuals}, "a manual pin was evicted"
        assert len(autos) <= max(0, pin_cap - len(manuals)), "auto-pins exceed what the cap leaves them"
        for author in {pin.author_id for pin in autos}:
            assert sum(pin.author_id == author for pin in autos) <= pin_rules.author_share(pin_cap)


def test_the_newest_pivotal_memory_wins_over_the_oldest_auto_pin():
    pins = [Pin(1, True, None, 10), Pin(2, True, None, 11), Pin(3, False, 12, 12)]
    assert pin_rules.auto_pin(pins, 4, 13, pin_cap=3) == (True, (1,))


def test_manual_pins_filling_the_cap_leave_no_room_for_an_auto_pin():
    pins = [Pin(1, False, 10, 10), Pin(2, False, 11, 11)]
    assert pin_rules.auto_pin(pins, 3, 12, pin_cap=2) == (False, ())


def test_one_authors_own_oldest_auto_pin_yields_first():
    pins = [Pin(1, True, None, 10), Pin(2, True, None, 20), Pin(3, True, None, 20)]
    # Author 20 already holds half of a cap of 4: their own oldest (2) yields, not author 10's older pin.
    assert pin_rules.auto_pin(pins, 4, 20, pin_cap=4) == (True, (2,))


def test_a_member_holds_their_quota_and_manual_pins_never_fill_more_than_the_cap():
    pins = [Pin(1, False, 10, 10), Pin(2, True, None, 11)]
    with pytest.raises(ManualPinLimit) as refused:
        pin_rules.check_manual_pin(pins, 10, member_quota=1, pin_cap=8)
    assert refused.value.limit == 1 and not refused.value.scope_full
    pin_rules.check_manual_pin(pins, 11, member_quota=1, pin_cap=8)  # someone else may
    full = [Pin(i, False, 100 + i, 100 + i) for i in range(1, 4)]
    with pytest.raises(ManualPinLimit) as refused:
        pin_rules.check_manual_pin(full, 10, member_quota=1, pin_cap=3)
    assert refused.value.limit == 3 and refused.value.scope_full
