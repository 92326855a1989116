"""The Client's Service selection rule (proto/services.py)."""

from dataclasses import dataclass

from runewarp.proto.hostname import normalize
from runewarp.proto.services import ServiceTable


@dataclass(frozen=True)
class Service:
    public_hostnames: tuple = ()
    tls_mode: str = "passthrough"


APP = Service(("app.example.com", "www.example.com"))
API = Service(("api.example.com",), tls_mode="terminate")


def test_exact_hostname_selects_its_service():
    table = ServiceTable([APP, API])
    assert table.select("app.example.com") is APP
    assert table.select("www.example.com") is APP
    assert table.select("api.example.com") is API
    assert table.catch_all is None


def test_lookup_is_exact_on_the_normalized_name_intake_gives():
    table = ServiceTable([APP, API])
    # Intake normalizes the SNI (case, trailing dot) before selection; the table itself is exact.
    assert table.select(normalize("App.Example.COM.")) is APP
    assert table.select("App.Example.COM") is None
    assert table.select("sub.app.example.com") is None  # no wildcard


def test_unknown_or_missing_hostname_selects_nothing():
    table = ServiceTable([APP, API])
    assert table.select("nobody.example.com") is None
    assert table.select(None) is None


def test_a_single_service_without_hostnames_is_the_catch_all():
    catch_all = Service()
    table = ServiceTable([catch_all])
    assert table.catch_all is catch_all
    assert table.select("anything.example.com") is catch_all
    assert table.select(None) is catch_all
    assert table.hostnames == []


def test_hostnames_are_sorted_for_the_control_hello():
    assert ServiceTable([API, APP]).hostnames == ["api.example.com", "app.example.com",
                                                  "www.example.com"]

