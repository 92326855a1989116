"""Admission under pressure: per-source caps by prefix, shedding the slowest oldest holder."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runewarp.errors import AdmissionRefused as Refused
from runewarp.proto.admission import SHED_CANDIDATES, Admission, source_key


def test_source_key_groups_ipv6_by_64_and_ipv4_by_configured_prefix():
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("192.0.2.7", ipv4_prefix=24) == "192.0.2.0/24"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("2001:db8:1:2::1", ipv6_prefix=48) == source_key("2001:db8:1:3::1",
                                                                         ipv6_prefix=48)
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"  # a mapped IPv4 peer is that IPv4 peer


def test_per_source_cap_counts_a_whole_ipv6_64():
    table = Admission(total=100, per_source=3)
    for i in range(3):
        table.admit(f"2001:db8::{i + 1}", now=0)
    with pytest.raises(Refused) as refused:
        table.admit("2001:db8::ffff", now=0)
    assert refused.value.reason == "source-full"
    table.admit("2001:db8:0:1::1", now=0)  # another /64 is another source


def test_pressure_sheds_the_oldest_holder_with_the_fewest_bytes():
    table = Admission(total=8, per_source=8, shed_above=4)
    slots = [table.admit(f"192.0.2.{i}", now=i)[0] for i in range(4)]
    slots[0].progress(500)  # the oldest is making progress: not the one to shed
    slots[1].progress(3)
    slots[2].progress(1)
    slots[3].progress(900)
    newcomer, shed = table.admit("198.51.100.1", now=10)
    assert shed == [slots[2]] and slots[2].shed and slots[2].released
    assert table.in_use == 4 and not newcomer.shed
    table.release(slots[2])  # the shed holder's own release later is a no-op
    assert table.in_use == 4


def test_a_full_table_with_nothing_to_shed_refuses():
    table = Admission(total=2, per_source=2, shed_above=5)
    table.admit("192.0.2.1", now=0)
    table.admit("192.0.2.2", now=0)
    with pytest.raises(Refused) as refused:
        table.admit("192.0.2.3", now=0)
    assert refused.value.reason == "table-full"


def test_shedding_looks_only_at_the_oldest_few():
    table = Admission(total=1000, per_source=1000, shed_above=SHED_CANDIDATES * 2)
    slots = [table.admit("192.0.2.1", now=i)[0] for i in range(SHED_CANDIDATES * 2)]
    for slot in slots[:SHED_CANDIDATES]:
        slot.progress(100)
    _, shed = table.admit("192.0.2.2", now=99)
    assert shed[0] in slots[:SHED_CANDIDATES]  # never a younger, even idler, holder


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(0, 3)), max_size=200))
def test_caps_hold_and_every_slot_is_released_once(ops):
    table = Admission(total=16, per_source=5, shed_above=12)
    held = []
    for now, (admit, pick, progress) in enumerate(ops):
        if admit:
            try:
                slot, shed = table.admit(f"192.0.2.{pick % 7}", now)
            except Refused:
                continue
            held.append(slot)
            slot.progress(progress)
            held = [s for s in held if s not in shed]
        elif held:
            table.release(held.pop(pick % len(held)))
        assert table.in_use <= 16
        assert all(n <= 5 for n in table.by_source.values())
        assert table.in_use == len(held) == sum(table.by_source.values())
    for slot in held:
        table.release(slot)
    assert table.in_use == 0 and table.by_source == {}
