"""Reconnecting after a Server restart: how soon, and what the Client logs meanwhile.

The Client runs with RUNEWARP_RECONNECT_WINDOWS="0.2,0.5", so the largest backoff
window is 0.5 s instead of 60 s: a connection up for longer than that is redialed at
once when it ends, and the schedule is then short enough to assert on.  Times are
taken from the processes' own log timestamps, not from sleeps in the test.
"""

import re
import signal
import time
from datetime import datetime

import pytest

from ..conftest import Proc, free_port
from .test_passthrough import APP, backends  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

WINDOWS = "0.2,0.5"
LARGEST = 0.5


def stamp(line):
    return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()


def level_and_event(line):
    _, level, event = line.split()[:3]
    return level, event


def start_server(deployment, identity, port):
    path = deployment.server_config([("apps", [APP], [identity])])
    path.write_text(path.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    server = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(server)
    server.wait_for("server-ready")
    return server


def start_client(deployment, backend):
    path = deployment.client_config("client-a", [([APP], backend.address)])
    client = Proc(["client", "-c", path],
                  env=dict(deployment.env, RUNEWARP_RECONNECT_WINDOWS=WINDOWS))
    deployment.processes.append(client)
    return client


def outage_lines(client, start):
    """The Client's lines from `start` up to and including the next established line."""
    client.wait_for("tunnel-connection-established", start=start)
    lines = client.lines[start:]
    end = next(i for i, line in enumerate(lines) if "tunnel-connection-established" in line)
    return lines[:end + 1]


def assert_outage_logged_once(lines):
    """First failure WARN, repeats INFO with a growing count, one recovery line."""
    failures = [line for line in lines if "tunnel-connection-failed" in line]
    assert failures, "\n".join(lines)
    attempts = [int(re.search(r" attempt=(\d+)", line).group(1)) for line in failures]
    assert attempts == list(range(1, len(failures) + 1)), failures
    assert level_and_event(failures[0]) == ("WARN", "tunnel-connection-failed"), failures[0]
    assert all(level_and_event(line)[0] == "INFO" for line in failures[1:]), failures
    established = lines[-1]
    assert f"failed-attempts={len(failures)} " in established + " ", established
    assert re.search(r" outage=\d+(\.\d+)?s", established), established
    # Every delay is logged as it is: the windows are 0.2 and 0.5 s, never "1s".
    delays = [re.search(r"next-retry-delay=(\S+)", line).group(1) for line in lines
              if "tunnel-reconnect-scheduled" in line]
    assert delays and all(re.fullmatch(r"\d+(\.\d{1,2})?s", d) for d in delays), delays
    assert all(float(d[:-1]) <= LARGEST for d in delays), delays
    return failures


def test_client_is_back_at_once_after_a_server_restart(deployment, backends):  # noqa: F811
    backend = backends("app", [APP])
    identity = deployment.identity("client-a")
    port = deployment.public_port = free_port()
    server = start_server(deployment, identity, port)
    client = start_client(deployment, backend)
    up = client.wait_for("tunnel-connection-established")
    assert "failed-attempts" not in up.string
    # The connection must outlive the largest window: the condition for an immediate redial.
    time.sleep(LARGEST + 0.2)

    mark = len(client.lines)
    assert server.stop() == 0
    client.wait_for("tunnel-connection-draining", start=mark)
    first = client.wait_for("tunnel-reconnect-scheduled", start=mark).string
    assert "next-retry-delay=0s" in first, first  # not a jittered wait: the first retry is immediate
    client.wait_for("tunnel-connection-failed .*attempt=2", start=mark)  # the Server is still down

    restarted = start_server(deployment, identity, port)
    ready = stamp(restarted.wait_for("server-ready").string)
    lines = outage_lines(client, mark)
    assert_outage_logged_once(lines)
    back = stamp(lines[-1])
    assert back - ready < 1.0, f"reconnected {back - ready:.2f}s after the Server was ready"
    # A Server that says go away before it stops is an ordinary disconnect, not a warning.
    assert not [line for line in lines if "tunnel-connection-lost" in line], lines
    restarted.wait_for("tunnel-connection-established")


def test_a_client_started_before_its_server_warns_once(deployment, backends):  # noqa: F811
    backend = backends("app", [APP])
    identity = deployment.identity("client-a")
    port = deployment.public_port = free_port()
    client = start_client(deployment, backend)
    client.wait_for("tunnel-connection-failed .*attempt=3")
    server = start_server(deployment, identity, port)
    lines = outage_lines(client, 0)
    failures = assert_outage_logged_once(lines)
    assert len(failures) >= 3
    server.wait_for("tunnel-connection-established")
    # The next outage warns again, once.
    mark = len(client.lines)
    server.signal(signal.SIGKILL)
    client.wait_for("tunnel-connection-lost", start=mark)
    client.wait_for("tunnel-connection-failed .*attempt=2", start=mark)
    start_server(deployment, identity, port)
    assert_outage_logged_once(outage_lines(client, mark))
