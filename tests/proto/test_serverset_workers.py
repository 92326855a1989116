"""Covering every Server worker (proto/serverset.py): the plan grows with the welcome's
`workers`, and `coverage` says when a connection is surplus."""

from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto.serverset import TRIES_PER_WORKER, Link, coverage, plan

A = ("tunnel.example.com", 443)
ADDRESS = ("192.0.2.1", 443)


def test_the_plan_holds_connections_per_server_for_each_server_worker():
    add, drain = plan(set(), {A: ["192.0.2.1"]}, 2, {(A, ADDRESS): 3})
    assert add == [Link(A, ADDRESS, i) for i in range(6)] and drain == []


def test_fewer_server_workers_drain_the_extra_connections():
    current = {Link(A, ADDRESS, i) for i in range(4)}
    assert plan(current, {A: None}, 1, {(A, ADDRESS): 2}) == (
        [], [Link(A, ADDRESS, 2), Link(A, ADDRESS, 3)])


def test_an_unknown_worker_count_is_one():
    assert plan(set(), {A: ["192.0.2.1"]}, 1, {})[0] == [Link(A, ADDRESS, 0)]


def test_a_server_from_before_workers_keeps_everything():
    # A single-process Server: every connection is worker 0 of 1, planned per_server times.
    assert coverage(0, 1, [], 1, 0) == "keep"
    assert coverage(0, 1, [(0, 1)], 2, 0) == "keep"


def test_a_connection_to_a_covered_worker_is_redialed_then_kept():
    assert coverage(1, 2, [(1, 2)], 1, 0) == "redial"
    assert coverage(1, 2, [(1, 2)], 1, TRIES_PER_WORKER * 2 - 1) == "redial"
    assert coverage(1, 2, [(1, 2)], 1, TRIES_PER_WORKER * 2) == "incomplete"


def test_connections_of_another_server_generation_do_not_cover():
    assert coverage(1, 2, [(1, 3), (1, 1)], 1, 0) == "keep"


@given(st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, n - 1),
    st.lists(st.tuples(st.integers(0, 9), st.integers(1, 9)), max_size=12),
    st.integers(1, 4), st.integers(0, 100))))
def test_coverage_redials_only_a_covered_worker_and_only_a_bounded_number_of_times(case):
    workers, worker, others, per_server, tries = case
    verdict = coverage(worker, workers, others, per_server, tries)
    covered = others.count((worker, workers)) >= per_server
    assert (verdict == "keep") == (not covered)
    assert verdict != "redial" or tries < TRIES_PER_WORKER * workers


@given(st.integers(1, 6), st.integers(1, 3), st.randoms(use_true_random=False))
def test_redialing_until_kept_ends_with_every_worker_covered(workers, per_server, rng):
    """A model of the Client's connections landing on random Server workers: each kept
    connection covers a worker still short, until the last one is kept incomplete."""
    kept = []
    for _ in range(workers * per_server):
        tries = 0
        while True:
            worker = rng.randrange(workers)
            verdict = coverage(worker, workers, [(w, workers) for w in kept], per_server, tries)
            if verdict != "redial":
                break
            tries += 1
        kept.append(worker)
        if verdict == "keep":
            assert kept.count(worker) <= per_server
    assert len(kept) == workers * per_server
