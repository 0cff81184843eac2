"""Which address a request comes from, behind trusted proxies, and its rate-limit bucket."""

from __future__ import annotations

import pytest

from services.common.errors import ConfigurationError
from services.common.settings import load_settings
from services.web.ratelimit import bucket_key, client_address, parse_trusted_proxies

PROXIES = parse_trusted_proxies(["10.0.0.0/8", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # No trusted proxy in front: the header is ignored, whatever it says.
        ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),
        # From a trusted proxy: the rightmost address that is not a trusted proxy.
        ("10.0.0.2", ["203.0.113.9"], "203.0.113.9"),
        ("10.0.0.2", ["1.1.1.1, 203.0.113.9, 10.0.0.5"], "203.0.113.9"),
        ("10.0.0.2", ["1.1.1.1", "203.0.113.9,10.0.0.5"], "203.0.113.9"),  # several header lines
        # A client cannot spoof its way past the proxy by sending its own header.
        ("10.0.0.2", ["10.9.9.9, 203.0.113.9"], "203.0.113.9"),
        # Everything trusted: the leftmost (earliest) hop.
        ("10.0.0.2", ["10.1.1.1, 10.0.0.5"], "10.1.1.1"),
        # No header from the trusted proxy: the proxy itself.
        ("10.0.0.2", [], "10.0.0.2"),
        # Garbage where the client should be: stop at the last trusted hop.
        ("10.0.0.2", ["not-an-ip"], "10.0.0.2"),
        ("10.0.0.2", ["203.0.113.9, junk, 10.0.0.5"], "10.0.0.5"),
        # Ports and brackets some proxies add.
        ("10.0.0.2", ["203.0.113.9:4711"], "203.0.113.9"),
        ("10.0.0.2", ["[2001:db8:1:2::5]:443"], "2001:db8:1:2::5"),
        ("2001:db8:ffff::1", ["2001:db8:1:2::5"], "2001:db8:1:2::5"),
        (None, ["203.0.113.9"], None),
    ],
)
def test_client_address_walks_x_forwarded_for_from_the_right(peer, forwarded, expected):
    assert client_address(peer, forwarded, PROXIES) == expected


def test_without_trusted_proxies_the_peer_is_the_client():
    assert client_address("10.0.0.2", ["203.0.113.9"], ()) == "10.0.0.2"


def test_buckets_ipv6_by_64_and_ipv4_by_address():
    assert bucket_key("2001:db8:1:2::5") == bucket_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert bucket_key("2001:db8:1:3::5") != bucket_key("2001:db8:1:2::5")
    assert bucket_key("203.0.113.9") == "203.0.113.9" != bucket_key("203.0.113.10")
    assert bucket_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert bucket_key(None) == "unknown"
    assert bucket_key("testclient") == "testclient"


def test_trusted_proxies_setting_is_validated():
    cfg = load_settings(web_trusted_proxies=["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"])
    assert cfg.web_trusted_proxies == ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"]
    with pytest.raises(ConfigurationError, match="OPTOUT_WEB_TRUSTED_PROXIES"):
        load_settings(web_trusted_proxies=["10.0.0.0/33"])
    with pytest.raises(ConfigurationError, match="OPTOUT_WEB_TRUSTED_PROXIES"):
        load_settings(web_trusted_proxies=["proxy.example"])
