"""The authenticator's network checks at sign-in, refresh and spawn, with real addresses and
real trusted-address lists fed through the access answer (no database, no identity provider)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from oauthenticator.oauth2 import OAuthenticator
from tornado import web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from authenticator import AIPowerAuthenticator
from quota_service.network import NetworkPolicy

TRUSTED = ["203.0.113.0/28", "2001:db8:42::/48"]


def handler(forwarded_for: str | None, peer: str = "127.0.0.1", method="POST", path="/x"):
    """A request as the hub receives it from the proxy (peer) with X-Forwarded-For."""
    headers = HTTPHeaders({"Host": "hub.example.tw"})
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    connection = SimpleNamespace(
        context=SimpleNamespace(_orig_remote_ip=peer, remote_ip=peer), set_close_callback=None
    )
    start = RequestStartLine(method, path, "HTTP/1.1")
    request = HTTPServerRequest(start_line=start, headers=headers, connection=connection)
    return SimpleNamespace(request=request)


def access_answer(category="training", status="approved", trusted=None):
    return {
        "groups": ["gpu-users"],
        "may_spawn": True,
        "project": {"category": category, "status": status},
        "trusted_networks": list(TRUSTED if trusted is None else trusted),
    }


@pytest.fixture
def authenticator(monkeypatch):
    """The authenticator behind a trusted load balancer on loopback; the identity provider
    and the quota service are replaced by the answers each test sets."""
    NetworkPolicy.clear_instance()
    auth = AIPowerAuthenticator(allow_all=True)
    policy = NetworkPolicy.instance(parent=auth)
    policy.trusted_proxies = ["127.0.0.0/8"]
    policy.enforce_trusted_networks = True
    auth.reported = []
    auth.answer = access_answer()

    async def report_refusal(name, refusal, attempt):
        auth.reported.append((name, refusal.country, refusal.address, attempt))

    async def oauth_authenticate(self, handler, data=None, **kwargs):
        model = {"name": "trainee", "auth_state": {"aipower": self.answer}}
        self.last_access["trainee"] = self.answer
        return model

    async def oauth_refresh(self, user, handler=None, **kwargs):
        self.last_access[user.name] = self.answer
        return {"name": user.name, "auth_state": {"aipower": self.answer}}

    monkeypatch.setattr(auth, "report_refusal", report_refusal)
    monkeypatch.setattr(OAuthenticator, "authenticate", oauth_authenticate)
    monkeypatch.setattr(OAuthenticator, "refresh_user", oauth_refresh)
    yield auth
    NetworkPolicy.clear_instance()


class User:
    name = "trainee"

    async def get_auth_state(self):
        return None


async def test_sign_in_from_mainland_china_is_refused_and_reported(authenticator):
    with pytest.raises(web.HTTPError) as refused:
        await authenticator.authenticate(handler("114.114.114.114, 127.0.0.1"), {})
    assert refused.value.status_code == 403
    assert "中國大陸" in refused.value.jupyterhub_message
    assert authenticator.reported == [("trainee", "CN", "114.114.114.114", "sign-in")]


async def test_sign_in_from_a_trusted_address_is_allowed(authenticator):
    model = await authenticator.authenticate(handler("203.0.113.9, 127.0.0.1"), {})
    assert model["name"] == "trainee" and authenticator.reported == []


@pytest.mark.parametrize("address", ["168.95.1.1", "203.0.113.16", "2001:db8:43::1"])
async def test_sign_in_outside_the_trusted_addresses_is_refused(authenticator, address):
    with pytest.raises(web.HTTPError) as refused:
        await authenticator.authenticate(handler(f"{address}, 127.0.0.1"), {})
    assert "trusted fixed IP addresses" in refused.value.log_message
    assert authenticator.reported == []  # logged, not a banned region


async def test_refresh_and_spawn_follow_the_latest_trusted_addresses(authenticator):
    spawn = handler("2001:db8:42::7, 127.0.0.1", path="/hub/api/users/trainee/server")
    assert await authenticator.refresh_user(User(), spawn)
    # the operator changes the project's addresses: the next refresh (or spawn) knows
    authenticator.answer = access_answer(trusted=["198.51.100.0/24"])
    with pytest.raises(web.HTTPError) as refused:
        await authenticator.refresh_user(User(), spawn)
    assert refused.value.status_code == 403 and "2001:db8:42::7" in refused.value.log_message


async def test_refresh_from_a_banned_region_is_refused_before_anything_else(authenticator):
    request = handler("2400:da00::6666, 127.0.0.1", method="GET", path="/hub/home")
    with pytest.raises(web.HTTPError):
        await authenticator.refresh_user(User(), request)
    assert authenticator.reported == [("trainee", "CN", "2400:da00::6666", "GET /hub/home")]


async def test_a_refresh_without_a_request_checks_nothing(authenticator):
    authenticator.answer = access_answer(trusted=[])
    assert await authenticator.refresh_user(User(), None)


async def test_a_spoofed_header_is_ignored_without_a_trusted_load_balancer(authenticator):
    NetworkPolicy.instance().trusted_proxies = []
    # the client wrote a Chinese address; the proxy saw a trusted one
    model = await authenticator.authenticate(handler("1.2.4.8, 203.0.113.3"), {})
    assert model["name"] == "trainee" and authenticator.reported == []
    # and the header of a peer that is not our proxy is not read at all
    with pytest.raises(web.HTTPError) as refused:
        await authenticator.authenticate(handler("203.0.113.3", peer="8.8.8.8"), {})
    assert "8.8.8.8" in refused.value.log_message


async def test_the_rule_is_off_in_the_embedded_default_and_for_inference(authenticator):
    outside = handler("168.95.1.1, 127.0.0.1")
    authenticator.answer = access_answer(category="inference")
    assert await authenticator.authenticate(outside, {})
    NetworkPolicy.instance().enforce_trusted_networks = False
    authenticator.answer = access_answer(trusted=[])
    assert await authenticator.authenticate(outside, {})


async def test_an_outage_keeps_the_trusted_addresses_last_known(authenticator, monkeypatch):
    from authenticator.oidc import _AccessUnknown

    async def outage(self, user, handler=None, **kwargs):
        raise _AccessUnknown()

    authenticator.last_access["trainee"] = access_answer(trusted=["198.51.100.0/24"])
    monkeypatch.setattr(OAuthenticator, "refresh_user", outage)
    assert await authenticator.refresh_user(User(), handler("198.51.100.4, 127.0.0.1"))
    with pytest.raises(web.HTTPError):
        await authenticator.refresh_user(User(), handler("203.0.113.1, 127.0.0.1"))
