"""Reconnect backoff with a fake clock and a fake draw: no sleeping, no randomness."""

import pytest

from runewarp.proto.backoff import WINDOWS, Backoff, parse_windows


def top(_low, high):
    """A draw that always takes the whole window: the schedule's worst case."""
    return high


def windows_drawn(backoff, n, now=0.0):
    return [backoff.next_delay(top, now) for _ in range(n)]


def test_failures_walk_the_windows_then_stay_at_the_largest():
    assert windows_drawn(Backoff(), 12) == [1, 2, 3, 5, 8, 12, 18, 27, 41, 60, 60, 60]


def test_the_delay_is_the_draw_in_zero_to_window():
    calls = []

    def uniform(low, high):
        calls.append((low, high))
        return 0.23

    assert Backoff().next_delay(uniform, 0.0) == 0.23
    assert calls == [(0, 1)]


def test_a_connection_up_longer_than_the_largest_window_retries_at_once():
    backoff = Backoff()
    windows_drawn(backoff, 4)  # the outage before it: the sequence reached 8 s
    backoff.established(now=100.0)
    # A Server restart after 61 s up: the first retry is immediate, then the sequence restarts.
    assert backoff.next_delay(top, now=161.0) == 0.0
    assert windows_drawn(backoff, 3, now=161.5) == [1, 2, 3]


def test_the_immediate_retry_is_exactly_at_the_largest_window():
    backoff = Backoff()
    backoff.established(now=0.0)
    assert backoff.next_delay(top, now=float(max(WINDOWS))) == 0.0


def test_any_established_connection_starts_the_sequence_again():
    backoff = Backoff()
    assert windows_drawn(backoff, 10) == [1, 2, 3, 5, 8, 12, 18, 27, 41, 60]
    backoff.established(now=10.0)
    # Up 30 s after a long outage: the next retry waits the first window, not 60 s.
    assert backoff.next_delay(top, now=40.0) == 1
    assert windows_drawn(backoff, 2, now=41.0) == [2, 3]


def test_a_first_connection_that_drops_soon_waits_the_first_window():
    backoff = Backoff()
    backoff.established(now=0.0)
    assert backoff.next_delay(top, now=30.0) == 1


def test_one_long_connection_gives_one_immediate_retry_only():
    backoff = Backoff()
    backoff.established(now=0.0)
    assert backoff.next_delay(top, now=3600.0) == 0.0
    assert backoff.next_delay(top, now=3600.1) == 1  # that retry failed: the windows again


def test_custom_windows_set_the_threshold():
    backoff = Backoff((0.2, 0.5))
    backoff.established(now=0.0)
    assert backoff.next_delay(top, now=0.4) == 0.2  # up less than 0.5 s
    backoff.established(now=1.0)
    assert backoff.next_delay(top, now=1.5) == 0.0
    assert windows_drawn(backoff, 3) == [0.2, 0.5, 0.5]
    backoff.established(now=2.0)
    assert windows_drawn(backoff, 1, now=2.1) == [0.2]


@pytest.mark.parametrize("windows", [(), (0,), (1, -2)])
def test_windows_must_be_positive(windows):
    with pytest.raises(ValueError):
        Backoff(windows)


@pytest.mark.parametrize("text,expected", [
    ("0.2,0.5", (0.2, 0.5)),
    ("3", (3.0,)),
    ("", None), ("0", None), ("-1,2", None), ("a,b", None), ("1,,2", None), ("inf", None),
    ("nan", None), (None, None),
])
def test_parse_windows(text, expected):
    assert parse_windows(text) == expected


def test_a_go_away_is_redialed_at_once_whatever_the_connection_age():
    backoff = Backoff((1, 2))
    backoff.established(now=100.0)
    assert backoff.next_delay(top, now=100.1, went_away=True) == 0.0
    # The replacement failed: the sequence applies from its first window.
    assert backoff.next_delay(top, now=100.2) == 1
    assert backoff.next_delay(top, now=100.3, went_away=True) == 2  # nothing was established
