"""End to end: the network rules of use through the real hub, proxy, OIDC provider and quota
service.

The test client connects from 127.0.0.1 and writes the address it "comes from" in
X-Forwarded-For. The proxy appends 127.0.0.1 (what it saw). With the embedded default that
claim is ignored; with ``AIPOWER_TRUSTED_PROXIES=127.0.0.0/8`` the test client stands for a
load balancer on loopback, so its X-Forwarded-For is believed.
"""

from __future__ import annotations

import json
import time

import psutil
import pytest
import requests
from sqlalchemy import select

from quota_service.models import AuditEvent, Project, UsageSession
from tests.platform import QuotaDB, wait_for
from tests.stack import Stack

pytestmark = pytest.mark.e2e

CN = "1.2.4.8"
CN_V6 = "2400:da00::6666"
HK = "203.198.7.66"
MO_V6 = "2401:20e0::1"
TW = "168.95.1.1"
TW_V6 = "2001:b000::1"


def start_stack(tmp_path_factory, name: str, **env: str) -> Stack:
    state = tmp_path_factory.mktemp(name)
    platform = Stack(state, quota_db_url=f"sqlite:///{state / 'quota.sqlite'}", extra_env=env)
    return platform.start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    platform = start_stack(
        tmp_path_factory,
        "regions",
        AIPOWER_TRUSTED_PROXIES="127.0.0.0/8",
        AIPOWER_ENFORCE_TRUSTED_NETWORKS="1",
        AIPOWER_AUTH_REFRESH_AGE="600",
    )
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def quota_db(stack):
    db = QuotaDB(stack.quota_db_url)
    yield db
    db.close()


def sign_in_from(
    stack: Stack, username: str, address: str
) -> tuple[requests.Session, requests.Response]:
    """The real OIDC flow, every request claiming ``address``."""
    browser = stack.client()
    browser.headers["X-Forwarded-For"] = address
    page = browser.get(stack.url("/hub/oauth_login"), timeout=30)
    assert page.status_code == 200 and 'name="sub"' in page.text, page.text[:500]
    return browser, browser.post(page.url, data={"sub": username}, timeout=60)


def refusals(quota_db: QuotaDB) -> list[tuple[AuditEvent, dict]]:
    with quota_db.factory() as db:
        events = db.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.like("network.refused.%"))
            .order_by(AuditEvent.id)
        ).all()
        return [(e, json.loads(e.detail)) for e in events]


def test_sign_in_from_mainland_china_is_refused_and_recorded(stack, quota_db):
    before = len(refusals(quota_db))
    browser, done = sign_in_from(stack, "trainee", CN)
    assert done.status_code == 403
    assert "中國大陸" in done.text and "mainland China" in done.text
    assert done.text.index("使用規範") < done.text.index("rules of use")
    assert not browser.cookies.get("jupyterhub-session-id")
    event, detail = refusals(quota_db)[before]
    assert event.action == "network.refused.banned-region"
    assert (event.subject_type, event.subject_id, event.actor) == (
        "account",
        "trainee",
        "aipower-hub-agent",
    )
    assert detail["address"] == CN and detail["country"] == "CN"
    assert detail["attempt"] == "sign-in" and len(detail["company_ids"]) == 1
    assert "Refused sign-in for trainee from 1.2.4.8 (CN): banned-region" in stack.log()


def test_sign_in_from_hong_kong_over_ipv6_is_refused(stack, quota_db):
    _, done = sign_in_from(stack, "operator", "2404:c800::1")
    assert done.status_code == 403 and "Hong Kong" in done.text
    event, detail = refusals(quota_db)[-1]
    assert (event.subject_id, detail["country"], detail["address"]) == (
        "operator",
        "HK",
        "2404:c800::1",
    )


def test_a_training_member_outside_trusted_addresses_cannot_sign_in(stack):
    # enforcement is on and no trusted addresses are stored for the demo project
    browser, done = sign_in_from(stack, "trainee", TW)
    assert done.status_code == 403, done.text[:500]
    assert "可信任的固定 IP" in done.text and "trusted fixed IP addresses" in done.text
    assert not browser.cookies.get("jupyterhub-session-id")


@pytest.fixture(scope="module")
def operator(stack):
    browser, done = sign_in_from(stack, "operator", TW)
    assert done.status_code == 200, done.text[:500]
    assert browser.cookies.get("jupyterhub-session-id")
    return browser, stack.api(stack.token_for(browser, "operator"))


def test_people_outside_training_projects_sign_in_from_taiwan(stack, operator):
    browser, _ = operator
    assert browser.get(stack.url("/hub/home"), timeout=30).status_code == 200


def test_quota_service_pages_refuse_banned_regions(stack, quota_db, operator):
    browser, _ = operator
    ok = browser.get(stack.url("/services/quota/"), headers={"X-Forwarded-For": TW_V6}, timeout=30)
    assert ok.status_code == 200 and "你尚未加入任何計畫" in ok.text
    refused = browser.get(
        stack.url("/services/quota/admin"), headers={"X-Forwarded-For": MO_V6}, timeout=30
    )
    assert refused.status_code == 403
    assert "澳門" in refused.text and "Macau" not in refused.text  # the page's language only
    english = browser.get(
        stack.url("/services/quota/admin?lang=en"), headers={"X-Forwarded-For": MO_V6}, timeout=30
    )
    del browser.cookies["aipower_lang"]
    assert english.status_code == 403
    assert "Macau" in english.text and "澳門" not in english.text
    event, detail = refusals(quota_db)[-1]
    assert (event.subject_id, detail["country"]) == ("operator", "MO")
    assert detail["attempt"] == "GET /services/quota/admin"
    # without signing in: recorded against the address
    anonymous = stack.client().get(
        stack.url("/services/quota/"), headers={"X-Forwarded-For": HK}, timeout=30
    )
    assert anonymous.status_code == 403 and "香港" in anonymous.text
    event, detail = refusals(quota_db)[-1]
    assert (event.subject_type, event.subject_id, detail["country"]) == ("address", HK, "HK")


def test_quota_service_api_refuses_banned_regions(stack, quota_db, operator):
    _, api = operator
    url = stack.url("/services/quota/api/v1/projects")
    assert api.get(url, headers={"X-Forwarded-For": TW}, timeout=10).status_code == 200
    refused = api.get(url, headers={"X-Forwarded-For": CN_V6}, timeout=10)
    assert refused.status_code == 403
    body = refused.json()
    assert body["reason"] == "banned-region" and "mainland China" in body["message"]
    event, detail = refusals(quota_db)[-1]
    assert (event.subject_id, detail["address"], detail["attempt"]) == (
        "operator",
        CN_V6,
        "GET /services/quota/api/v1/projects",
    )


def test_a_refusal_report_is_judged_by_the_service(stack, quota_db, operator):
    _, api = operator
    url = stack.url("/services/quota/api/v1/network-refusals")
    before = len(refusals(quota_db))
    allowed = api.post(url, json={"address": TW, "attempt": "GET /user/operator/lab"}, timeout=10)
    assert allowed.status_code == 422 and allowed.json()["reason"] == "not-banned"
    garbage = api.post(url, json={"address": "not an address"}, timeout=10)
    assert garbage.status_code == 422
    assert len(refusals(quota_db)) == before


def test_hub_pages_and_api_refuse_banned_regions_on_every_request(stack, quota_db, operator):
    browser, api = operator
    url = stack.url("/hub/api/users/operator")
    assert api.get(url, headers={"X-Forwarded-For": TW}, timeout=10).status_code == 200
    # right after a request from Taiwan: no refresh is due, the hub refuses all the same
    refused = api.get(url, headers={"X-Forwarded-For": MO_V6}, timeout=10)
    assert refused.status_code == 403 and refused.json()["reason"] == "banned-region"
    assert "Macau" in refused.json()["message"]
    event, detail = refusals(quota_db)[-1]
    assert (event.subject_id, detail["attempt"]) == ("operator", "GET /hub/api/users/operator")
    page = browser.get(stack.url("/hub/home"), headers={"X-Forwarded-For": CN}, timeout=30)
    assert page.status_code == 403 and "中國大陸" in page.text and "mainland China" in page.text
    event, detail = refusals(quota_db)[-1]
    assert (event.subject_id, detail["attempt"]) == ("operator", "GET /hub/home")
    # the login page itself is harmless: a sign-in is refused once the person is known
    login = stack.client().get(stack.url("/hub/login"), headers={"X-Forwarded-For": CN}, timeout=30)
    assert login.status_code == 200


def test_a_spoofed_header_before_an_untrusted_hop_is_ignored(stack, operator):
    # a client in Taiwan (as the load balancer saw it) that writes a Chinese address itself
    _, api = operator
    response = api.get(
        stack.url("/services/quota/api/v1/projects"),
        headers={"X-Forwarded-For": f"{CN}, {TW}"},
        timeout=10,
    )
    assert response.status_code == 200


@pytest.fixture(scope="module")
def infer(stack, quota_db):
    """A member of an inference project: the trusted-address rule does not apply to them."""
    project_id = quota_db.add_project("infer", business_number="10458575", millipoints=100_000)
    with quota_db.factory() as db:
        db.get(Project, project_id).category = "inference"
        db.commit()
    browser, done = sign_in_from(stack, "infer", TW)
    assert done.status_code == 200, done.text[:500]
    return browser, stack.api(stack.token_for(browser, "infer"))


def test_spawn_from_a_banned_region_is_refused_and_nothing_runs(stack, quota_db, infer):
    _, api = infer
    sessions = quota_db.count(UsageSession)
    response = api.post(
        stack.url("/hub/api/users/infer/server"),
        json={"gpu_vendor": "nvidia", "gpu_count": 1},
        headers={"X-Forwarded-For": CN},
        timeout=60,
    )
    assert response.status_code == 403, response.text
    assert "mainland China" in response.json()["message"]
    user = api.get(stack.url("/hub/api/users/infer"), headers={"X-Forwarded-For": TW}, timeout=10)
    assert user.json()["servers"] == {}
    assert quota_db.count(UsageSession) == sessions
    event, detail = refusals(quota_db)[-1]
    assert (event.subject_id, detail["attempt"]) == ("infer", "POST /hub/api/users/infer/server")


def test_a_running_server_refuses_banned_regions_and_reports_them(stack, quota_db, infer):
    browser, api = infer
    recorded_before = len(refusals(quota_db))
    started = api.post(
        stack.url("/hub/api/users/infer/server"),
        json={"gpu_vendor": "nvidia", "gpu_count": 1},
        headers={"X-Forwarded-For": TW},
        timeout=60,
    )
    assert started.status_code in (201, 202), started.text
    try:
        wait_for(
            lambda: (
                api.get(stack.url("/hub/api/users/infer"), timeout=10).json()["servers"].get("")
                or {}
            ).get("ready"),
            60,
            "infer's server ready",
        )
        # JupyterLab from Taiwan, through the server's own OAuth with the hub
        lab = browser.get(stack.url("/user/infer/lab"), timeout=30)
        assert lab.status_code == 200 and "JupyterLab" in lab.text
        # the same browser and the same token, from Hong Kong and from mainland China
        page = browser.get(
            stack.url("/user/infer/lab"), headers={"X-Forwarded-For": HK}, timeout=30
        )
        assert page.status_code == 403 and "香港" in page.text and "Hong Kong" in page.text
        status = api.get(
            stack.url("/user/infer/api/status"), headers={"X-Forwarded-For": CN_V6}, timeout=30
        )
        assert status.status_code == 403 and "mainland China" in status.text
        assert api.get(stack.url("/user/infer/api/status"), timeout=30).status_code == 200
        # the server reported both refusals, recorded against infer and its company; the
        # Hong Kong client retrying at once is refused again but not recorded twice
        assert (
            browser.get(
                stack.url("/user/infer/lab"), headers={"X-Forwarded-For": HK}, timeout=30
            ).status_code
            == 403
        )
        wait_for(lambda: len(refusals(quota_db)) >= recorded_before + 2, 30, "reports recorded")
        time.sleep(2)
        from_server = refusals(quota_db)[recorded_before:]
        assert sorted((d["country"], d["attempt"]) for _, d in from_server) == [
            ("CN", "server default: GET /user/infer/api/status"),
            ("HK", "server default: GET /user/infer/lab"),
        ]
        assert {(e.subject_id, e.actor) for e, _ in from_server} == {("infer", "infer")}
        assert all(d["companies"] for _, d in from_server)
    finally:
        api.delete(stack.url("/hub/api/users/infer/server"), timeout=60)


def test_the_hub_runs_the_idle_culler(stack):
    hub = psutil.Process(stack.process.pid)

    def culler():
        return [
            p
            for p in hub.children(recursive=True)
            if "jupyterhub_idle_culler" in " ".join(p.cmdline())
        ]

    (process,) = wait_for(culler, 30, "the idle culler running")
    assert "--timeout=3600" in process.cmdline()


def test_the_embedded_default_ignores_what_the_client_claims(tmp_path_factory):
    """No trusted load balancer: the address the browser writes is never believed."""
    platform = start_stack(tmp_path_factory, "default")
    try:
        browser, done = sign_in_from(platform, "trainee", CN)
        assert done.status_code == 200 and browser.cookies.get("jupyterhub-session-id")
        api = platform.api(platform.token_for(browser, "trainee"))
        projects = api.get(
            platform.url("/services/quota/api/v1/projects"),
            headers={"X-Forwarded-For": HK},
            timeout=10,
        )
        assert projects.status_code == 200 and projects.json()
        db = QuotaDB(platform.quota_db_url)
        try:
            assert refusals(db) == []
        finally:
            db.close()
    finally:
        platform.stop()
