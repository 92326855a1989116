"""A dead worker's restart delay (workers.restart_delay): at once after a long run, longer
each time for one that keeps dying soon after its start."""

from runewarp.workers import restart_delay


def test_a_crash_loop_waits_longer_each_time_up_to_30_s():
    delays, streak = [], 0
    for _ in range(8):
        delay, streak = restart_delay(lived=2.0, quick_exits=streak)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_worker_that_served_30_s_starts_again_at_once_and_the_streak_ends():
    assert restart_delay(lived=30.0, quick_exits=5) == (0.0, 0)
    assert restart_delay(lived=29.9, quick_exits=0) == (1.0, 1)
