"""The health columns of `runewarp server|client status` (runewarp/status.py): what keeps
Visitors off a pool member, and each Service's health."""

import re

from runewarp import status

from .test_status import NOW, row

MEMBER = {"client_identity": "ab" * 32, "instance": "8d94c8545fb5", "peer": "203.0.113.7:40122",
          "connected_since": "2026-09-20T23:10:05Z", "active_streams": 0,
          "ping_rtt_seconds": 0.0021, "hostnames": ["a.example.com", "b.example.com"],
          "catch_all": False}


def server(*members):
    return {"role": "server", "tunnels": [{"name": "apps", "public_hostnames": ["a.example.com"],
                                           "active_streams": 0, "members": list(members)}]}


def test_a_members_unhealthy_hostnames_and_overdue_ping_are_shown():
    sick = {**MEMBER, "instance": "sick", "unhealthy_hostnames": ["b.example.com"],
            "ping_overdue": True}
    gone = {**MEMBER, "instance": "gone", "hostnames": [], "catch_all": True,
            "catch_all_unhealthy": True, "unhealthy_hostnames": [], "ping_overdue": False}
    fine = {**MEMBER, "instance": "fine", "unhealthy_hostnames": [], "ping_overdue": False}
    members = status.render(server(sick, gone, fine), NOW).split("Pool members\n")[1]

    def unhealthy(instance):
        line = next(line for line in members.splitlines() if f"  {instance}  " in line)
        return re.split(r"\s{2,}", line.strip())[-1]

    assert unhealthy("sick") == "b.example.com, (ping overdue)"
    assert unhealthy("gone") == "(Catch-all)"  # serves all, and all of it is unhealthy
    assert unhealthy("fine") == "-"
    assert row(members, "apps")[-1] == "b.example.com, (ping overdue)"  # the first row


def test_each_services_health_and_its_check_are_shown():
    document = {"role": "client", "servers": [], "services": [
        {"public_hostnames": ["a.example.com"], "backend": "127.0.0.1:8443",
         "tls_mode": "passthrough", "active_streams": 0, "health": "unhealthy",
         "health_check": "tls"},
        {"public_hostnames": ["b.example.com"], "backend": "127.0.0.1:8444",
         "tls_mode": "passthrough", "active_streams": 1, "health": "healthy",
         "health_check": None}]}
    text = status.render(document, NOW)
    assert row(text, "a.example.com")[-1] == "unhealthy (tls check)"
    assert row(text, "b.example.com")[-1] == "healthy"
