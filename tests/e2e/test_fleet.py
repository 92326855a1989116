"""A fleet: two real Server nodes whose API Tunnels are in one real etcd (tests/etcd.py), each
with its own `[server.api]` listener, and a real Client with a Tunnel connection to each.

A Tunnel added through node A's API routes Visitors on node B; with etcd stopped both nodes
keep routing and API writes answer 503; with etcd back, writes work again and reach the
other node.  Every wait is bounded; none is a timing assertion.
"""

import json
import time

import pytest

from .. import etcd as etcd_helper
from ..conftest import SERVER_HOSTNAME, Proc, free_port
from ..etcd import needs_etcd, raw_put
from .helpers import curl
from .peers import APP
from .test_api import Api, api_ca_file, tunnel

pytestmark = [pytest.mark.e2e, needs_etcd, pytest.mark.timeout(150)]
etcd = etcd_helper.etcd  # fixture
STATIC = "static.example.com"
OTHER = "other.example.com"
BOUND = 15  # seconds any change may take to show, far above the 2 s the fleet promises


def start_node(deployment, name, etcd_url, static_id, port=None, api_port=None):
    """One Server node: its own public port, API listener and cache file; the fleet's etcd.
    (process, public port, Api); `port`, `api_port`: those of the node it restarts."""
    port, api_port = port or free_port(), api_port or free_port()
    extra = (f'[server.api]\nbind-address = "127.0.0.1:{api_port}"\n'
             f'client-ca-file = "{api_ca_file(deployment.dir)}"\n'
             f'state-file = "state/{name}-api-tunnels.json"\n'
             f'etcd-endpoints = ["{etcd_url}"]\n')
    text = deployment.server_config([("static", [STATIC], [static_id])], extra=extra).read_text()
    path = deployment.dir / f"server-{name}.toml"
    path.write_text(text.replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    proc = Proc(["server", "-c", path], env=deployment.env)
    proc.name = f"runewarp server {name}"
    deployment.processes.append(proc)
    proc.wait_for("api-listening")
    return proc, port, Api(deployment.dir, deployment.ca_file, api_port)


def eventually(check, what, bound=BOUND):
    """Until `check()` is true, polling; AssertionError naming `what` after `bound` s."""
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound}s: {what}")
        time.sleep(0.1)


def routes(port, backend):
    return curl(port, APP, backend.ca, timeout=5).returncode == 0


def test_values_written_by_hand_in_etcd_never_block_the_api(deployment, etcd):
    """The prefix itself, a value that is no record and a record in another JSON form, all by
    `etcdctl put`: the node loads the rest, and a PUT through its API replaces each."""
    prefix = "/runewarp/tunnels/"
    app = tunnel([APP], [deployment.identity("app")])
    raw_put(etcd, prefix, "")
    raw_put(etcd, prefix + "junk", "not json")
    raw_put(etcd, prefix + "app", json.dumps(app, indent=2))
    node, _, api = start_node(deployment, "a", etcd.url, deployment.identity("static"))
    node.wait_for("api-store-invalid-record .*tunnel=junk")
    status, headers, body = api.call("GET", "/v1/tunnels/app")
    assert status == 200 and body["client-identities"] == app["client-identities"], body
    changed = tunnel([APP, OTHER], app["client-identities"])
    status, _, body = api.call("PUT", "/v1/tunnels/app", changed,
                               headers=[f"If-Match: {headers['etag']}"])
    assert status == 200, body
    assert api.call("GET", "/v1/tunnels/junk")[0] == 404
    junk = tunnel(["junk.example.com"], [deployment.identity("junk")])
    status, _, body = api.call("PUT", "/v1/tunnels/junk", junk)
    assert status == 201, body
    node.wait_for("api-store-invalid-record-replaced .*tunnel=junk")
    assert api.call("GET", "/v1/tunnels/junk")[0] == 200
    assert node.count("api-store-unavailable") == node.count("Traceback") == 0


def test_one_routing_table_for_two_nodes_through_an_etcd_outage(deployment, backend, etcd):
    static_id, app_id = deployment.identity("static"), deployment.identity("app")
    node_a, port_a, api_a = start_node(deployment, "a", etcd.url, static_id)
    node_b, port_b, api_b = start_node(deployment, "b", etcd.url, static_id)
    path = deployment.client_config("app", [([APP], backend.address)], settings={
        "server-address": [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"],
        "server-name": SERVER_HOSTNAME})
    client = Proc(["client", "-c", path],
                  env={**deployment.env, "RUNEWARP_RECONNECT_WINDOWS": "0.2,0.5"})
    deployment.processes.append(client)

    # Added through node A: node B routes it too, from etcd's watch.
    status, _, body = api_a.call("PUT", "/v1/tunnels/app", tunnel([APP], [app_id]))
    assert status == 201, body
    node_b.wait_for("api-tunnels-followed tunnels=1", timeout=BOUND)
    client.wait_count("tunnel-connection-established", 2, timeout=BOUND)
    eventually(lambda: routes(port_b, backend), "node B routes the Tunnel added on node A")
    assert routes(port_a, backend)

    # etcd stopped: both nodes keep their table; a write answers 503 and changes nothing.
    etcd.stop()
    for node in (node_a, node_b):
        node.wait_for("api-store-unavailable", timeout=BOUND)
    assert routes(port_a, backend) and routes(port_b, backend)
    other_id = deployment.identity("other")
    status, _, body = api_b.call("PUT", "/v1/tunnels/other", tunnel([OTHER], [other_id]))
    assert status == 503 and "unavailable" in body["error"], body
    assert api_b.call("GET", "/v1/tunnels/other")[0] == 404
    # Node B restarted during the outage routes the table it cached in its state-file.
    node_b.stop()
    node_b, _, _ = start_node(deployment, "b", etcd.url, static_id, port_b, api_b.port)
    node_b.wait_for("api-store-cache-used .*tunnels=1")
    eventually(lambda: routes(port_b, backend), "node B, restarted during the outage, routes")

    # etcd back: a write through node B works and reaches node A.
    etcd.start()
    for node in (node_a, node_b):
        node.wait_for("api-store-recovered", timeout=BOUND)
    status, _, body = api_b.call("PUT", "/v1/tunnels/other", tunnel([OTHER], [other_id]))
    assert status == 201, body
    eventually(lambda: api_a.call("GET", "/v1/tunnels/other")[0] == 200,
               "node A has the Tunnel added on node B")
    status, _, _ = api_b.call("DELETE", "/v1/tunnels/app")
    assert status in (200, 204)
    eventually(lambda: not routes(port_a, backend), "node A drops the Tunnel deleted on node B")
    assert node_a.count("Traceback") == node_b.count("Traceback") == 0
