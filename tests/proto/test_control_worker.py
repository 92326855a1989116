"""The welcome's `worker` / `workers`: absent means 0 of 1, both ways, and a bad pair is a
ControlError naming the fields."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto import control
from runewarp.proto.control import ControlError


def test_a_single_process_sends_the_welcome_it_always_did():
    assert "worker" not in control.welcome("apps", "1.0", worker=(0, 1))
    assert "workers" not in control.welcome("apps", "1.0")


def test_a_welcome_without_the_fields_is_worker_0_of_1():
    welcome = control.parse_welcome(control.welcome("apps", "1.0"))
    assert (welcome.worker, welcome.workers) == (0, 1)


@given(st.integers(1, control.MAX_WORKERS).flatmap(
    lambda n: st.tuples(st.integers(0, n - 1), st.just(n))))
def test_worker_round_trip(worker):
    line = control.encode(control.welcome("apps", "1.0", ["a.example"], worker))
    message = control.LineDecoder().feed(line)[0]
    welcome = control.parse_welcome(message)
    assert (welcome.worker, welcome.workers) == worker
    assert welcome.public_hostnames == ("a.example",)


@pytest.mark.parametrize("fields", [
    {"worker": 1}, {"workers": 2}, {"worker": 2, "workers": 2}, {"worker": -1, "workers": 2},
    {"worker": 0, "workers": 0}, {"worker": 0, "workers": 65}, {"worker": "0", "workers": 2},
    {"worker": 0, "workers": 2.0}, {"worker": True, "workers": 2}, {"worker": None, "workers": 2},
    {"worker": 0, "workers": 10 ** 30},
])
def test_bad_worker_fields_are_a_control_error(fields):
    with pytest.raises(ControlError, match="worker"):
        control.parse_welcome({**control.welcome("apps", "1.0"), **fields})


@given(st.dictionaries(st.sampled_from(["worker", "workers"]),
                       st.one_of(st.integers(-2, 70), st.sampled_from(["1", None, True, 1.0,
                                                                        [1], 2 ** 70]))))
def test_any_worker_fields_parse_or_raise_control_error(fields):
    try:
        welcome = control.parse_welcome({**control.welcome("apps", "1.0"), **fields})
    except ControlError:
        return
    assert 0 <= welcome.worker < welcome.workers <= control.MAX_WORKERS
