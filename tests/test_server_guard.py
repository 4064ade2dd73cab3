"""The single-user servers' network guard: a real tornado application behind the gate, with
real addresses and real trusted-address lists; and what the spawner passes to the server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from authenticator import server_guard
from quota_service.network import NetworkPolicy, parse_address

TRUSTED = ["203.0.113.0/28", "2001:db8:42::/48"]


class Lab(RequestHandler):
    def get(self):
        self.finish("JupyterLab")


@pytest.fixture
async def serve():
    servers = []

    async def start(trusted: list[str] | None, **policy):
        app = Application([(r"/.*", Lab)])
        policy = NetworkPolicy(**({"trusted_proxies": ["127.0.0.0/8"]} | policy))
        server_guard.guard_application(
            app, lambda request: server_guard.decide(request, policy, trusted)
        )
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(app, xheaders=True)
        server.add_sockets(sockets)
        servers.append(server)
        port = sockets[0].getsockname()[1]

        async def get(forwarded_for: str | None = None):
            headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
            return await AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}/user/trainee/lab", headers=headers, raise_error=False
            )

        return get

    yield start
    for server in servers:
        server.stop()


async def test_banned_regions_are_refused_before_any_handler(serve):
    get = await serve(trusted=None)
    for address, words in (("1.2.4.8", "mainland China"), ("2404:c800::1", "Hong Kong")):
        response = await get(f"{address}, 127.0.0.1")
        assert response.code == 403 and response.reason == "banned-region"
        assert words in response.body.decode()
    assert (await get("168.95.1.1, 127.0.0.1")).body == b"JupyterLab"
    assert (await get("2001:200::1, 127.0.0.1")).body == b"JupyterLab"


async def test_the_owners_trusted_addresses(serve):
    get = await serve(trusted=TRUSTED)
    assert (await get("203.0.113.5, 127.0.0.1")).code == 200
    assert (await get("2001:db8:42::1, 127.0.0.1")).code == 200
    outside = await get("168.95.1.1, 127.0.0.1")
    assert outside.code == 403 and "168.95.1.1" in outside.body.decode()
    assert (await get("1.2.4.8, 127.0.0.1")).reason == "banned-region"


async def test_no_trusted_addresses_registered_refuses_everyone_but_the_hub(serve):
    get = await serve(trusted=[])
    assert (await get("203.0.113.5, 127.0.0.1")).reason == "no-trusted-addresses"
    # the hub checking the server: straight from loopback, no X-Forwarded-For
    assert (await get(None)).code == 200


async def test_a_spoofed_header_is_ignored_without_a_trusted_load_balancer(serve):
    get = await serve(trusted=TRUSTED, trusted_proxies=[])
    # the client claims a trusted address; the proxy saw loopback, which is not trusted
    assert (await get("203.0.113.5, 127.0.0.1")).code == 403
    # the client claims China; the proxy saw a trusted address
    assert (await get("1.2.4.8, 203.0.113.5")).code == 200


def test_the_spawner_passes_the_owners_trusted_addresses():
    policy = NetworkPolicy(enforce_trusted_networks=True, trusted_proxies=["10.0.0.0/24"])
    access = {
        "project": {"category": "training", "status": "approved"},
        "trusted_networks": TRUSTED,
    }
    authenticator = SimpleNamespace(network=policy, last_access={"trainee": access})
    spawner = SimpleNamespace(user=SimpleNamespace(name="trainee"), authenticator=authenticator)
    env = {
        key: value(spawner) if callable(value) else value
        for key, value in server_guard.environment(policy).items()
    }
    assert env["AIPOWER_TRUSTED_NETWORKS_APPLY"] == "1"
    assert env["AIPOWER_TRUSTED_NETWORKS"] == "203.0.113.0/28,2001:db8:42::/48"
    assert env["AIPOWER_TRUSTED_PROXIES"] == "10.0.0.0/24"
    assert env["AIPOWER_BANNED_COUNTRIES"] == "CN,HK,MO"
    access["project"]["category"] = "inference"
    assert server_guard.environment(policy)["AIPOWER_TRUSTED_NETWORKS_APPLY"](spawner) == "0"
    assert server_guard.server_args() == [
        "--ServerApp.jpserver_extensions=authenticator.server_guard=True"
    ]


def test_the_extension_reads_its_environment(monkeypatch):
    monkeypatch.setenv("AIPOWER_TRUSTED_NETWORKS_APPLY", "1")
    monkeypatch.setenv("AIPOWER_TRUSTED_NETWORKS", "203.0.113.0/28")
    NetworkPolicy.clear_instance()
    app = Application([(r"/.*", Lab)])
    logged, warned = [], []
    serverapp = SimpleNamespace(
        web_app=app,
        log=SimpleNamespace(info=lambda *a: logged.append(a), warning=lambda *a: warned.append(a)),
    )
    try:
        server_guard._load_jupyter_server_extension(serverapp)
    finally:
        NetworkPolicy.clear_instance()
    assert app.find_handler.__name__ == "guarded"
    assert "203.0.113.0/28" in logged[0]
    # no quota URL in this environment: refusals stay in the server's log, and it says so
    assert "AIPOWER_QUOTA_URL" in warned[0]
    assert server_guard._jupyter_server_extension_points() == [
        {"module": "authenticator.server_guard"}
    ]


def test_refusals_are_reported_once_a_minute_per_address():
    now = [1000.0]
    reporter = server_guard.RefusalReporter(
        "http://quota:10101/services/quota/", "token", clock=lambda: now[0]
    )
    assert reporter.url == "http://quota:10101/services/quota/api/v1/network-refusals"
    china = NetworkPolicy().region_refusal(parse_address("1.2.4.8"))
    hong_kong = NetworkPolicy().region_refusal(parse_address("203.198.7.66"))
    assert reporter.due(china)
    now[0] += 59.9
    assert not reporter.due(china)
    assert reporter.due(hong_kong)  # another address is reported at once
    now[0] += 0.1
    assert reporter.due(china)
    # an address outside the trusted ones is refused, but it is not a rule-of-use record
    outside = server_guard.trusted_refusal(parse_address("168.95.1.1"), TRUSTED)
    assert not reporter.due(outside)


def test_reports_need_the_quota_url_and_the_servers_token():
    assert server_guard.reporter_from_environment({"JUPYTERHUB_API_TOKEN": "t"}) is None
    assert server_guard.reporter_from_environment({"AIPOWER_QUOTA_URL": "http://q/"}) is None
    reporter = server_guard.reporter_from_environment(
        {
            "AIPOWER_QUOTA_URL": "http://q/",
            "JUPYTERHUB_API_TOKEN": "t",
            "JUPYTERHUB_SERVER_NAME": "gpu",
        }
    )
    assert (reporter.token, reporter.server_name) == ("t", "gpu")


def test_a_flood_of_addresses_does_not_grow_the_memory_without_bound(monkeypatch):
    monkeypatch.setattr(server_guard, "REMEMBERED_ADDRESSES", 2)
    now = [0.0]
    reporter = server_guard.RefusalReporter("http://q/", "t", clock=lambda: now[0])
    policy = NetworkPolicy()
    first, second, third = (
        policy.region_refusal(parse_address(a)) for a in ("1.2.4.8", "203.198.7.66", "1.2.4.9")
    )
    assert reporter.due(first) and reporter.due(second)
    now[0] = 61.0  # both stale: the third address makes room by forgetting them
    assert reporter.due(third)
    assert set(reporter.last_sent) == {"1.2.4.9"}
    assert not reporter.due(third)  # still remembered within its minute
