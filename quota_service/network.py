"""Where a request comes from, and whether the platform serves it there.

The rules of use forbid connecting from mainland China, Hong Kong or Macau, and let members of
a training project connect only from their project's trusted fixed addresses. This module is
the one place that decides both; the hub's authenticator, the quota service and the
single-user servers' guard all call it.

The client's address: a request reaches the hub, the quota service or a single-user server
through configurable-http-proxy, which appends the address it saw to ``X-Forwarded-For``.
Anything further left in that header was written by someone else: by a load balancer in front
of the proxy, or by the client itself. So the header is read from the right, and an entry is
believed only while the hop that wrote it is trusted (:func:`client_address`):

- the direct peer must be one of ``proxy_networks`` (the platform's own proxy, and the hub when
  it calls the quota service) for the header to be read at all;
- the entry the proxy appended is then the client, unless it is the address of one of the
  ``trusted_proxies`` (load balancers in front of the proxy), in which case the next entry to
  the left is taken, and so on.

The two lists differ on purpose. In the embedded default the browser and the proxy are both on
127.0.0.1: trusting 127.0.0.1 as a proxy must not make the browser a trusted hop, or anyone on
the machine could claim any address. Setting ``trusted_proxies`` says that a load balancer
really stands in front of the proxy.

Country look-up is offline, from the regional internet registries' data shipped in ``iptocc``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import iptocc
from traitlets import Bool, List, Unicode, default, validate
from traitlets.config import SingletonConfigurable

log = logging.getLogger(__name__)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

BANNED_COUNTRIES = ("CN", "HK", "MO")
LOOPBACK = ("127.0.0.1/32", "::1/128")

# how the refusal names each region, Traditional Chinese first
REGION_NAMES = {
    "CN": ("中國大陸", "mainland China"),
    "HK": ("香港", "Hong Kong"),
    "MO": ("澳門", "Macau"),
}

BANNED_REGION = "banned-region"
UNTRUSTED_ADDRESS = "untrusted-address"
NO_TRUSTED_ADDRESSES = "no-trusted-addresses"


# ---- addresses and networks ---------------------------------------------------------------

_BRACKETED = re.compile(r"^\[([^\]]+)\](?::\d+)?$")
_V4_WITH_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d+$")


def parse_address(text: str | None) -> Address | None:
    """One address as proxies write them: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``,
    ``[2001:db8::1]:443``, ``fe80::1%eth0``; IPv4-mapped IPv6 (``::ffff:1.2.3.4``, as node
    writes IPv4 peers on a dual-stack socket) becomes IPv4. None for anything else
    (``unknown``, obfuscated identifiers, garbage)."""
    if not text:
        return None
    text = text.strip().strip('"')
    match = _BRACKETED.match(text) or _V4_WITH_PORT.match(text)
    if match:
        text = match.group(1)
    text = text.split("%", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> Network:
    """``10.0.0.0/8``, ``203.0.113.7`` (one host), ``2001:db8::/32``; host bits are allowed
    (``127.0.0.1/8`` is ``127.0.0.0/8``). Raises ValueError with the offending text."""
    try:
        network = ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR block: {text!r}") from None
    if isinstance(network, IPv6Network) and network.network_address.ipv4_mapped is not None:
        # ::ffff:0:0/96 style: compare in IPv4, the way parse_address unmaps peers
        if network.prefixlen >= 96:
            return IPv4Network(
                (network.network_address.ipv4_mapped, network.prefixlen - 96), strict=False
            )
    return network


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(parse_network(item) for item in items if item and item.strip())


def split_list(value: str | None) -> list[str]:
    """A list from an environment variable: comma- or space-separated."""
    return [item for item in re.split(r"[,\s]+", value or "") if item]


def in_networks(address: Address | None, networks: Iterable[Network]) -> bool:
    return address is not None and any(
        address.version == network.version and address in network for network in networks
    )


def client_address(
    peer: str | None,
    forwarded_for: str | None,
    proxy_networks: Sequence[Network],
    trusted_proxies: Sequence[Network] = (),
) -> Address | None:
    """The client's address, believing ``X-Forwarded-For`` only through trusted hops.

    ``peer`` is the socket's remote address. When it is not one of ``proxy_networks`` or
    ``trusted_proxies``, the header is ignored and the peer is the client. Otherwise the
    header is walked from the right: each entry is the address that the hop to its right
    saw; the first entry that is not a trusted proxy's is the client. An entry that is not
    an address stops the walk at the hop that wrote it (the last trusted one).
    """
    current = parse_address(peer)
    if not in_networks(current, (*proxy_networks, *trusted_proxies)):
        return current
    hops = [hop for hop in (forwarded_for or "").split(",") if hop.strip()]
    # the entry our proxy appended is believed as what the proxy saw
    if not hops:
        return current
    entry = parse_address(hops.pop())
    if entry is None:
        return current
    current = entry
    while hops and in_networks(current, trusted_proxies):
        entry = parse_address(hops.pop())
        if entry is None:
            break
        current = entry
    return current


def peer_of(request) -> str:
    """The socket's own remote address of a tornado request. ``request.remote_ip`` is not
    used: with ``xheaders=True`` (the hub, the quota service) tornado overwrites it from
    ``X-Real-Ip`` or ``X-Forwarded-For``, which any client can send."""
    context = getattr(request.connection, "context", None)
    return getattr(context, "_orig_remote_ip", None) or request.remote_ip


def country_of(address: Address | None) -> str | None:
    """ISO 3166 country code of a public address from the registries' data, else None
    (loopback, private and other special-purpose ranges have no country)."""
    if address is None or not address.is_global:
        return None
    return iptocc.country_code(str(address))


# ---- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkRefusal:
    code: str
    zh: str
    en: str
    address: str
    country: str | None = None

    @property
    def message(self) -> str:
        return f"{self.zh} / {self.en}"

    def as_dict(self) -> dict:
        return {
            "code": self.code,
            "address": self.address,
            "country": self.country,
            "message": self.message,
        }


def region_refusal(
    address: Address | None, banned: Iterable[str] = BANNED_COUNTRIES
) -> NetworkRefusal | None:
    """A refusal when ``address`` is in a banned region, else None."""
    country = country_of(address)
    if country is None or country not in set(banned):
        return None
    zh_region, en_region = REGION_NAMES.get(country, (country, country))
    return NetworkRefusal(
        BANNED_REGION,
        f"依平臺使用規範，不得自{zh_region}的網路位址（{address}）連線使用本平臺；"
        "本次連線已記錄，營運單位將判斷是否構成違規。",
        f"The platform's rules of use forbid connecting from {en_region} addresses "
        f"({address}); this attempt was recorded and the operator will decide whether it "
        "is a violation.",
        str(address),
        country,
    )


def trusted_refusal(
    address: Address | None, trusted_networks: Iterable[str]
) -> NetworkRefusal | None:
    """A refusal when ``address`` is outside the project's trusted fixed addresses (CIDR
    strings), else None. No trusted addresses at all refuses everything: the rule is that
    members connect only from registered addresses."""
    networks = []
    for item in trusted_networks:
        try:
            networks.append(parse_network(item))
        except ValueError:
            log.warning("Ignoring a trusted network that is not one: %r", item)
    shown = str(address) if address is not None else "unknown"
    if not networks:
        return NetworkRefusal(
            NO_TRUSTED_ADDRESSES,
            "你的計畫尚未登錄可信任的固定 IP 位址，請聯絡營運單位登錄後再連線。",
            "Your project has no trusted fixed IP addresses registered yet; ask the operator "
            "to register them, then connect from one of them.",
            shown,
        )
    if in_networks(address, networks):
        return None
    return NetworkRefusal(
        UNTRUSTED_ADDRESS,
        f"訓練類計畫只能從計畫登錄的可信任固定 IP 位址連線；你目前的位址（{shown}）不在其中。",
        f"Training projects may connect only from the project's trusted fixed IP addresses; "
        f"your address ({shown}) is not one of them.",
        shown,
    )


# statuses of a project whose members hold accounts (the award came): before it, an
# applicant signs in only to see how the application stands
_AWARDED = {"approved", "suspended", "closed", "terminated"}


def trusted_networks_apply(access: dict | None) -> bool:
    """Whether the person's connections are limited to their project's trusted addresses:
    members of an awarded training project (from the quota service's access answer)."""
    project = (access or {}).get("project") or {}
    return project.get("category") == "training" and project.get("status") in _AWARDED


def _env_list(name: str, fallback: Sequence[str]) -> list[str]:
    value = os.environ.get(name)
    return list(fallback) if value is None else split_list(value)


class NetworkPolicy(SingletonConfigurable):
    """Where requests come from, and the network rules of use. Configured in the hub's
    configuration (``c.NetworkPolicy...``); every default comes from the environment variable
    named in its help, so the quota service and the single-user servers, which get the same
    variables, decide the same way."""

    proxy_networks = List(
        Unicode(),
        help="""Addresses that connect directly to the hub, the quota service and the
        single-user servers: the platform's configurable-http-proxy, and the hub itself when
        it calls the quota service. Their X-Forwarded-For entry (the address they saw) is
        believed; the header from any other peer is ignored. Addresses or CIDR blocks, IPv4
        or IPv6. Default: loopback (the embedded default's proxy), e.g. ["10.0.0.0/8"] for
        the proxy pods of a cluster. Env: AIPOWER_PROXY_NETWORKS (comma-separated).""",
    ).tag(config=True)

    @default("proxy_networks")
    def _default_proxy_networks(self):
        return _env_list("AIPOWER_PROXY_NETWORKS", LOOPBACK)

    trusted_proxies = List(
        Unicode(),
        help="""Load balancers or ingress controllers in front of configurable-http-proxy
        whose X-Forwarded-For entries are believed too: when the address the proxy saw is one
        of these, the entry to its left is taken, and so on. Default: none (the proxy is the
        edge, so whatever a client writes in X-Forwarded-For is ignored), e.g.
        ["203.0.113.10", "2001:db8:1::/64"]. Env: AIPOWER_TRUSTED_PROXIES (comma-separated).""",
    ).tag(config=True)

    @default("trusted_proxies")
    def _default_trusted_proxies(self):
        return _env_list("AIPOWER_TRUSTED_PROXIES", ())

    banned_countries = List(
        Unicode(),
        help="""ISO 3166 country codes from which the platform refuses every connection, e.g.
        ["CN", "HK", "MO"] (the rules of use: mainland China, Hong Kong, Macau).
        Env: AIPOWER_BANNED_COUNTRIES (comma-separated).""",
    ).tag(config=True)

    @default("banned_countries")
    def _default_banned_countries(self):
        return [code.upper() for code in _env_list("AIPOWER_BANNED_COUNTRIES", BANNED_COUNTRIES)]

    enforce_trusted_networks = Bool(
        help="""Members of awarded training projects may sign in and reach their servers only
        from their project's trusted fixed addresses. False in the embedded default, True in
        production. Env: AIPOWER_ENFORCE_TRUSTED_NETWORKS (1 or 0).""",
    ).tag(config=True)

    @default("enforce_trusted_networks")
    def _default_enforce(self):
        return os.environ.get("AIPOWER_ENFORCE_TRUSTED_NETWORKS", "0") == "1"

    @validate("proxy_networks", "trusted_proxies")
    def _check_networks(self, proposal):
        parse_networks(proposal.value)  # fail at start-up, not at the first request
        return proposal.value

    def client_of(self, request) -> Address | None:
        """The client's address of a tornado request (see the module's docstring)."""
        return client_address(
            peer_of(request),
            request.headers.get("X-Forwarded-For"),
            parse_networks(self.proxy_networks),
            parse_networks(self.trusted_proxies),
        )

    def region_refusal(self, address: Address | None) -> NetworkRefusal | None:
        return region_refusal(address, self.banned_countries)

    def trusted_refusal(
        self, address: Address | None, access: dict | None
    ) -> NetworkRefusal | None:
        """The trusted-address rule for a person, given the quota service's access answer
        (its ``trusted_networks`` and project)."""
        if not self.enforce_trusted_networks or not trusted_networks_apply(access):
            return None
        return trusted_refusal(address, access.get("trusted_networks") or [])

    def environment(self) -> dict[str, str]:
        """The variables that give another process (the quota service, a single-user
        server) this policy."""
        return {
            "AIPOWER_PROXY_NETWORKS": ",".join(self.proxy_networks),
            "AIPOWER_TRUSTED_PROXIES": ",".join(self.trusted_proxies),
            "AIPOWER_BANNED_COUNTRIES": ",".join(self.banned_countries),
            "AIPOWER_ENFORCE_TRUSTED_NETWORKS": "1" if self.enforce_trusted_networks else "0",
        }


# ---- a gate in front of a tornado application ---------------------------------------------


def is_platform_request(request, policy: NetworkPolicy) -> bool:
    """A request from the platform itself (the hub checking a server, the hub's agent
    calling the quota service): straight from a ``proxy_networks`` peer, with no
    X-Forwarded-For, so it did not come through the proxy."""
    return "X-Forwarded-For" not in request.headers and in_networks(
        parse_address(peer_of(request)), parse_networks(policy.proxy_networks)
    )


def guard_application(app, decide, refused_handler=None) -> None:
    """Put ``decide(request) -> NetworkRefusal | None`` in front of every request to a tornado
    application (pages, API, websockets, static files): a refusal is answered by
    ``refused_handler`` (given ``refusal=``), by default a plain 403 with the bilingual
    message, before any of the application's handlers runs."""
    find_handler = app.find_handler
    handler_class = refused_handler or plain_refusal_handler()

    def guarded(request, **kwargs):
        refusal = decide(request)
        if refusal is not None:
            return app.get_handler_delegate(request, handler_class, {"refusal": refusal})
        return find_handler(request, **kwargs)

    app.find_handler = guarded


def plain_refusal_handler():
    from tornado import web

    class Refused(web.RequestHandler):
        def initialize(self, refusal: NetworkRefusal):
            self.refusal = refusal

        def prepare(self):
            log.warning(
                "Refused %s %s from %s (%s): %s",
                self.request.method,
                self.request.path,
                self.refusal.address,
                self.refusal.country or "-",
                self.refusal.code,
            )
            self.set_status(403, self.refusal.code)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(self.refusal.message + "\n")

    return Refused


# ---- the record ------------------------------------------------------------------------------

REFUSAL_ACTION = "network.refused"


def record_refusal(
    db, refusal: NetworkRefusal, *, username: str | None, attempt: str, actor: str, now
):
    """One audit event per refused connection, against the person and their companies when
    known (an operator decides whether it is a violation)."""
    from . import audit, reports

    companies = []
    if username:
        companies = sorted(
            {(p.company_id, p.company.name) for p in reports.projects_of(db, username)}
        )
    return audit.record(
        db,
        actor=actor,
        action=f"{REFUSAL_ACTION}.{refusal.code}",
        subject_type="account" if username else "address",
        subject_id=username or refusal.address,
        at=now,
        username=username,
        address=refusal.address,
        country=refusal.country,
        attempt=attempt,
        company_ids=[company_id for company_id, _ in companies],
        companies=[name for _, name in companies],
    )


def guard_quota_request(handler) -> None:
    """The quota service's check of every page and API request (``BaseHandler.prepare``,
    after the caller is identified): a request from a banned region is recorded and refused.
    The hub's agent reports a refusal of its own by forwarding the person's address in
    ``X-Forwarded-For`` (the hub is one of ``proxy_networks``), naming the person in the
    path and what was attempted in ``X-AIPower-Attempt``."""
    from tornado import web

    from .timewindow import utcnow

    policy = NetworkPolicy.instance()
    refusal = policy.region_refusal(policy.client_of(handler.request))
    if refusal is None:
        return
    caller = getattr(handler, "_hub_auth_user_cache", None) or {}
    request = handler.request
    username, actor = caller.get("name"), caller.get("name") or "anonymous"
    attempt = f"{request.method} {request.path}"
    if caller.get("kind") == "service":
        username = handler.path_args[0] if handler.path_args else None
        attempt = request.headers.get("X-AIPower-Attempt", attempt)
    log.warning(
        "Refused %s from %s (%s): %s",
        username or "a request",
        refusal.address,
        refusal.country,
        attempt,
    )
    with handler.db() as db:
        record_refusal(db, refusal, username=username, attempt=attempt, actor=actor, now=utcnow())
    raise web.HTTPError(403, refusal.message, reason=refusal.code)
