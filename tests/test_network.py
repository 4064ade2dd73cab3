"""Where requests come from: real addresses of each region, X-Forwarded-For through trusted
hops only, the trusted-address rule, and the audit record of a refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from quota_service import network
from quota_service.models import Account, AuditEvent, Company, Membership, Project
from quota_service.network import (
    LOOPBACK,
    NetworkPolicy,
    client_address,
    country_of,
    parse_address,
    parse_network,
    parse_networks,
    region_refusal,
    trusted_refusal,
)

# Each address was checked against the registries' data that iptocc ships: public resolvers
# and operators' blocks, so the region is not in doubt.
REFUSED = [
    ("1.2.4.8", "CN"),  # CNNIC public DNS
    ("114.114.114.114", "CN"),  # 114DNS
    ("223.5.5.5", "CN"),  # AliDNS
    ("2400:da00::6666", "CN"),  # Baidu public DNS, IPv6
    ("240e::1", "CN"),  # China Telecom's IPv6 block
    ("203.198.7.66", "HK"),  # PCCW (Netvigator) DNS
    ("202.45.84.58", "HK"),
    ("2404:c800::1", "HK"),
    ("2001:7fa:0:1::1", "HK"),  # HKIX
    ("202.175.3.3", "MO"),  # CTM DNS
    ("60.246.0.1", "MO"),
    ("2401:20e0::1", "MO"),
]
ALLOWED = [
    ("168.95.1.1", "TW"),  # HiNet DNS
    ("101.101.101.101", "TW"),  # TWNIC Quad101
    ("2001:b000::1", "TW"),  # HiNet IPv6
    ("8.8.8.8", "US"),
    ("2001:4860:4860::8888", "US"),  # Google public DNS, IPv6
    ("133.242.0.1", "JP"),
    ("2001:200::1", "JP"),  # WIDE project
]


@pytest.mark.parametrize(("address", "country"), REFUSED)
def test_mainland_china_hong_kong_and_macau_are_refused(address, country):
    assert country_of(parse_address(address)) == country
    refusal = region_refusal(parse_address(address))
    assert refusal is not None and refusal.code == "banned-region"
    assert refusal.country == country and refusal.address == address
    zh, en = network.REGION_NAMES[country]
    # Traditional Chinese first, then English
    assert refusal.message.index(zh) < refusal.message.index(en)
    assert "rules of use" in refusal.en and "使用規範" in refusal.zh


@pytest.mark.parametrize(("address", "country"), ALLOWED)
def test_taiwan_united_states_and_japan_are_allowed(address, country):
    assert country_of(parse_address(address)) == country
    assert region_refusal(parse_address(address)) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.0.5", "fd00::1"])
def test_loopback_and_private_addresses_have_no_country(address):
    assert country_of(parse_address(address)) is None
    assert region_refusal(parse_address(address)) is None


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4():
    # node writes IPv4 peers on a dual-stack socket like this; iptocc alone finds no country
    assert parse_address("::ffff:1.2.4.8") == parse_address("1.2.4.8")
    assert region_refusal(parse_address("::ffff:1.2.4.8")).country == "CN"


def test_the_banned_list_is_a_setting():
    assert region_refusal(parse_address("8.8.8.8"), banned=["US"]).country == "US"
    assert region_refusal(parse_address("1.2.4.8"), banned=["HK", "MO"]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.4.8", "1.2.4.8"),
        (" 1.2.4.8:51234 ", "1.2.4.8"),
        ("[2400:da00::6666]:443", "2400:da00::6666"),
        ("2400:da00::6666", "2400:da00::6666"),
        ("fe80::1%eth0", "fe80::1"),
        ('"[2001:db8::1]"', "2001:db8::1"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("1.2.4.8.9", None),
    ],
)
def test_addresses_as_proxies_write_them(text, expected):
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected


# ---- X-Forwarded-For ---------------------------------------------------------------------

CHP = parse_networks(LOOPBACK)
LB = parse_networks(["10.0.0.0/24", "2001:db8:1::/64"])


def test_a_spoofed_header_from_an_untrusted_peer_is_ignored():
    # someone reaches the hub directly from Japan and claims to be in Taiwan, or in China
    assert str(client_address("133.242.0.1", "168.95.1.1", CHP)) == "133.242.0.1"
    assert str(client_address("133.242.0.1", "1.2.4.8", CHP, LB)) == "133.242.0.1"


def test_the_embedded_default_believes_only_what_the_proxy_saw():
    # the browser on 127.0.0.1 sends a Chinese address; the proxy appends 127.0.0.1
    assert str(client_address("127.0.0.1", "1.2.4.8, 127.0.0.1", CHP)) == "127.0.0.1"
    # the proxy saw a Taiwanese client
    assert str(client_address("127.0.0.1", "1.2.4.8, 168.95.1.1", CHP)) == "168.95.1.1"
    # no header: a direct call from the hub itself
    assert str(client_address("127.0.0.1", None, CHP)) == "127.0.0.1"


def test_through_a_trusted_load_balancer_the_client_is_the_first_untrusted_hop():
    # client 1.2.4.8 -> load balancer 10.0.0.5 -> proxy -> hub
    assert str(client_address("127.0.0.1", "1.2.4.8, 10.0.0.5", CHP, LB)) == "1.2.4.8"
    # a client in the US that writes a Chinese address itself is judged by its own address
    assert str(client_address("127.0.0.1", "1.2.4.8, 8.8.8.8, 10.0.0.5", CHP, LB)) == "8.8.8.8"
    # IPv6 all the way, with ports and brackets
    forwarded = "[2400:da00::6666]:5000, 2001:db8:1::7"
    assert str(client_address("::1", forwarded, CHP, LB)) == "2400:da00::6666"


def test_a_garbage_entry_stops_at_the_last_trusted_hop():
    assert str(client_address("127.0.0.1", "1.2.4.8, unknown, 10.0.0.5", CHP, LB)) == "10.0.0.5"
    assert str(client_address("127.0.0.1", "nonsense", CHP, LB)) == "127.0.0.1"


def test_a_trusted_load_balancer_on_loopback_makes_the_browsers_claim_believed():
    # what the end-to-end test configures: AIPOWER_TRUSTED_PROXIES=127.0.0.1/8
    upstream = parse_networks(["127.0.0.1/8"])
    assert str(client_address("127.0.0.1", "1.2.4.8, 127.0.0.1", CHP, upstream)) == "1.2.4.8"


def test_networks_accept_hosts_cidr_blocks_and_host_bits():
    assert parse_network("127.0.0.1/8") == parse_network("127.0.0.0/8")
    assert str(parse_network("203.0.113.7")) == "203.0.113.7/32"
    assert str(parse_network("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    with pytest.raises(ValueError, match="not an IP address"):
        parse_network("10.0.0.0/33")


def test_policy_defaults_come_from_the_environment(monkeypatch):
    for name in network.NetworkPolicy().environment():
        monkeypatch.delenv(name, raising=False)
    policy = NetworkPolicy()
    assert policy.proxy_networks == list(LOOPBACK) and policy.trusted_proxies == []
    assert policy.banned_countries == ["CN", "HK", "MO"]
    assert policy.enforce_trusted_networks is False
    monkeypatch.setenv("AIPOWER_TRUSTED_PROXIES", "10.0.0.0/24, 2001:db8:1::/64")
    monkeypatch.setenv("AIPOWER_BANNED_COUNTRIES", "cn,hk")
    monkeypatch.setenv("AIPOWER_ENFORCE_TRUSTED_NETWORKS", "1")
    policy = NetworkPolicy()
    assert policy.trusted_proxies == ["10.0.0.0/24", "2001:db8:1::/64"]
    assert policy.banned_countries == ["CN", "HK"] and policy.enforce_trusted_networks
    # another process given policy.environment() decides the same way
    assert policy.environment()["AIPOWER_TRUSTED_PROXIES"] == "10.0.0.0/24,2001:db8:1::/64"
    with pytest.raises(ValueError, match="not an IP address"):
        NetworkPolicy(trusted_proxies=["10.0.0.300"])


async def test_the_peer_is_the_socket_not_what_tornado_made_of_the_headers():
    """The hub and the quota service run tornado with xheaders=True, which believes
    X-Real-Ip and the last X-Forwarded-For entry from anyone; the policy reads the socket."""
    seen = {}

    class Echo(RequestHandler):
        def get(self):
            seen["remote_ip"] = self.request.remote_ip
            seen["peer"] = network.peer_of(self.request)
            seen["client"] = str(NetworkPolicy(trusted_proxies=[]).client_of(self.request))
            self.finish("ok")

    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    server = HTTPServer(Application([("/", Echo)]), xheaders=True)
    server.add_sockets(sockets)
    try:
        await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/",
            headers={"X-Real-Ip": "168.95.1.1", "X-Forwarded-For": "1.2.4.8"},
        )
    finally:
        server.stop()
    assert seen["remote_ip"] == "168.95.1.1"  # tornado believed the client
    assert seen["peer"] == "127.0.0.1"
    # as if the proxy had appended the browser's claim: the proxy's entry is the client
    assert seen["client"] == "1.2.4.8"


# ---- trusted addresses (training projects) ------------------------------------------------

TRUSTED = ["203.0.113.0/28", "198.51.100.7", "2001:db8:42::/48"]


@pytest.mark.parametrize(
    "address", ["203.0.113.1", "203.0.113.15", "198.51.100.7", "2001:db8:42::9"]
)
def test_inside_the_trusted_addresses_is_allowed(address):
    assert trusted_refusal(parse_address(address), TRUSTED) is None


@pytest.mark.parametrize(
    "address", ["203.0.113.16", "198.51.100.8", "2001:db8:43::1", "168.95.1.1"]
)
def test_outside_the_trusted_addresses_is_refused(address):
    refusal = trusted_refusal(parse_address(address), TRUSTED)
    assert refusal.code == "untrusted-address" and address in refusal.message
    assert refusal.message.startswith("訓練類計畫只能從")


def test_no_trusted_addresses_refuses_everything():
    refusal = trusted_refusal(parse_address("168.95.1.1"), [])
    assert refusal.code == "no-trusted-addresses" and "營運單位" in refusal.zh


def access_answer(category="training", status="approved", trusted=TRUSTED):
    return {
        "project": {"category": category, "status": status},
        "trusted_networks": trusted,
    }


def test_the_rule_is_off_unless_enforced_and_only_for_awarded_training_projects():
    outside = parse_address("168.95.1.1")
    assert (
        NetworkPolicy(enforce_trusted_networks=False).trusted_refusal(outside, access_answer())
        is None
    )
    policy = NetworkPolicy(enforce_trusted_networks=True)
    assert policy.trusted_refusal(outside, access_answer()).code == "untrusted-address"
    assert policy.trusted_refusal(parse_address("203.0.113.2"), access_answer()) is None
    assert policy.trusted_refusal(outside, access_answer(status="suspended")) is not None
    assert policy.trusted_refusal(outside, access_answer(category="inference")) is None
    assert policy.trusted_refusal(outside, access_answer(status="pending")) is None
    assert policy.trusted_refusal(outside, {"project": None, "trusted_networks": []}) is None


# ---- the record ---------------------------------------------------------------------------


def test_a_refusal_is_recorded_against_the_person_and_their_company(db):
    now = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)
    company = Company(name="示範智能股份有限公司", business_number="04595257", created_at=now)
    account = Account(username="trainee", created_at=now)
    project = Project(company=company, name="計畫", created_at=now)
    db.add_all(
        [company, account, project, Membership(project=project, account=account, created_at=now)]
    )
    db.flush()
    refusal = region_refusal(parse_address("2400:da00::6666"))
    network.record_refusal(
        db, refusal, username="trainee", attempt="sign-in", actor="aipower-hub-agent", now=now
    )
    network.record_refusal(
        db, refusal, username=None, attempt="GET /services/quota/", actor="anonymous", now=now
    )
    db.flush()
    named, anonymous = db.query(AuditEvent).order_by(AuditEvent.id).all()
    assert named.action == "network.refused.banned-region"
    assert (named.subject_type, named.subject_id) == ("account", "trainee")
    detail = json.loads(named.detail)
    assert detail["address"] == "2400:da00::6666" and detail["country"] == "CN"
    assert detail["attempt"] == "sign-in" and detail["company_ids"] == [company.id]
    assert (anonymous.subject_type, anonymous.subject_id) == ("address", "2400:da00::6666")
    assert json.loads(anonymous.detail)["company_ids"] == []
