"""The short fuzz profile (`make test`): every decoder in tests/fuzz/targets.py over every
prefix and every one-byte change of its seeds, then FUZZ_EXAMPLES (default 300)
hypothesis inputs.  The long profile is `make fuzz` (tests/fuzz/run.py, docs/testing.md)."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .targets import TARGETS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


def _near(seed):
    """Every proper prefix, and every byte replaced by its complement."""
    for end in range(len(seed)):
        yield seed[:end]
    for at in range(len(seed)):
        yield seed[:at] + bytes([seed[at] ^ 0xFF]) + seed[at + 1:]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_and_their_neighbours(name):
    target, seeds = TARGETS[name]
    for seed in seeds():
        target(seed)
        for data in _near(seed):
            target(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_generated_inputs(name):
    target, seeds = TARGETS[name]
    corpus = seeds()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.one_of(st.binary(max_size=2048),
                     st.tuples(st.sampled_from(corpus), st.integers(0, 4096), st.binary(max_size=64))
                     .map(lambda t: t[0][:t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1):])))
    def run(data):
        target(data)

    run()
