"""`[server] trusted-proxies`: empty by default; CIDRs or single addresses, kept in
canonical form; anything else is one error naming the entry (exit 2 through the CLI)."""

import pytest

from runewarp.config import load_server_config
from runewarp.errors import ConfigError

from .conftest import run_cli
from .test_config import _server_with


def trusted(write, env, value):
    return load_server_config(write(_server_with(f"trusted-proxies = {value}")), env=env).trusted_proxies


def test_empty_by_default(write, env):
    assert load_server_config(write(_server_with()), env=env).trusted_proxies == ()


def test_an_empty_array_trusts_no_one(write, env):
    assert trusted(write, env, "[]") == ()


def test_cidrs_and_single_addresses_in_canonical_form(write, env):
    value = '["10.0.0.0/8", "192.0.2.7", "2001:DB8::/32", "::1", "127.0.0.5/32"]'
    assert trusted(write, env, value) == (
        "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128", "127.0.0.5/32")


@pytest.mark.parametrize("value, key, message", [
    ('"10.0.0.0/8"', "server.trusted-proxies", "expected an array of CIDRs, got a string"),
    ('["10.0.0.0/8", 7]', "server.trusted-proxies[1]", "expected a CIDR string, got an integer"),
    ('["balancer.example.com"]', "server.trusted-proxies[0]",
     "'balancer.example.com' is not an IP address or CIDR"),
    ('["10.0.0.1/8"]', "server.trusted-proxies[0]", "'10.0.0.1/8' is not an IP address or CIDR (10.0.0.1/8 has host bits set)"),
    ('["10.0.0.0/33"]', "server.trusted-proxies[0]", "'10.0.0.0/33' is not an IP address or CIDR"),
    ('["fe80::1%eth0"]', "server.trusted-proxies[0]", "'fe80::1%eth0': an IPv6 zone is not allowed"),
    ('[""]', "server.trusted-proxies[0]", "'' is not an IP address or CIDR"),
])
def test_bad_values_name_the_entry(write, env, value, key, message):
    with pytest.raises(ConfigError) as e:
        trusted(write, env, value)
    assert e.value.key == key
    assert e.value.message.startswith(message), e.value.message


def test_the_cli_exits_2_with_one_line_naming_file_and_key(write, home):
    path = write(_server_with('trusted-proxies = ["10.0.0.0/8", "10.1.2.3/16"]'))
    proc = run_cli("server", "-c", path, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                   check=False, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: server.trusted-proxies[1]: '10.1.2.3/16' is not an IP address or CIDR "
        "(10.1.2.3/16 has host bits set)"]
