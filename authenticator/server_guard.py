"""The network rules of use for traffic to the single-user servers: a jupyter_server extension.

Why a server extension (docs/network-policy.md): the rule for training members depends on
who owns the server (their project's trusted addresses), and the one process that knows both
the owner and every request's address is the server itself. configurable-http-proxy has no
per-route filters, and a Kubernetes NetworkPolicy sees only the proxy's pod, never the
person's address. The same check runs on the local spawner and on Kubernetes, wherever the
image has this package.

The hub's spawner passes the settings in the server's environment (:func:`environment`):

- ``AIPOWER_PROXY_NETWORKS``, ``AIPOWER_TRUSTED_PROXIES``, ``AIPOWER_BANNED_COUNTRIES``: the
  same ``NetworkPolicy`` as the hub's, so the client's address is read the same way;
- ``AIPOWER_TRUSTED_NETWORKS_APPLY`` (``1`` or ``0``) and ``AIPOWER_TRUSTED_NETWORKS``
  (comma-separated CIDR blocks): whether the owner is held to their project's trusted
  addresses, and which, as the quota service said at the spawn's refresh.

Every request through the proxy from a banned region, or from outside the trusted addresses
when they apply, is answered with 403 and the bilingual message before any handler runs
(JupyterLab, the API, kernels' websockets, terminals). Requests from the hub itself (no
X-Forwarded-For, from one of ``proxy_networks``) pass.

A banned-region refusal is also reported to the quota service (``POST
<AIPOWER_QUOTA_URL>/api/v1/network-refusals`` with the server's own token, so it is recorded
against the owner and their company, as the hub's refusals are), at most once a minute per
address: a client retrying in a loop must not flood the record or the service.
"""

from __future__ import annotations

import json
import logging
import os
import time

from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop

from quota_service.network import (
    BANNED_REGION,
    NetworkPolicy,
    NetworkRefusal,
    guard_application,
    is_platform_request,
    plain_refusal_handler,
    split_list,
    trusted_networks_apply,
    trusted_refusal,
)

EXTENSION = "authenticator.server_guard"
APPLY = "AIPOWER_TRUSTED_NETWORKS_APPLY"
TRUSTED = "AIPOWER_TRUSTED_NETWORKS"
QUOTA_URL = "AIPOWER_QUOTA_URL"
REPORT_EVERY_SECONDS = 60
REMEMBERED_ADDRESSES = 10_000
REPORT_TIMEOUT = 5.0
log = logging.getLogger(__name__)


def decide(request, policy: NetworkPolicy, trusted: list[str] | None) -> NetworkRefusal | None:
    """``trusted``: the owner's trusted addresses when the rule applies to them, else None."""
    if is_platform_request(request, policy):
        return None
    address = policy.client_of(request)
    refusal = policy.region_refusal(address)
    if refusal is None and trusted is not None:
        refusal = trusted_refusal(address, trusted)
    return refusal


class RefusalReporter:
    """Sends banned-region refusals to the quota service, once a minute per address at most.
    Reporting never delays or changes the refusal itself."""

    def __init__(self, quota_url: str, token: str, server_name: str = "", clock=time.monotonic):
        self.url = quota_url.rstrip("/") + "/api/v1/network-refusals"
        self.token, self.server_name, self.clock = token, server_name, clock
        self.last_sent: dict[str, float] = {}

    def due(self, refusal: NetworkRefusal) -> bool:
        if refusal.code != BANNED_REGION:
            return False
        now, last = self.clock(), self.last_sent.get(refusal.address)
        if last is not None and now - last < REPORT_EVERY_SECONDS:
            return False
        if len(self.last_sent) >= REMEMBERED_ADDRESSES:  # many addresses: forget the stale ones
            self.last_sent = {
                a: t for a, t in self.last_sent.items() if now - t < REPORT_EVERY_SECONDS
            }
        self.last_sent[refusal.address] = now
        return True

    async def send(self, refusal: NetworkRefusal, attempt: str) -> None:
        body = {"address": refusal.address, "attempt": attempt, "server_name": self.server_name}
        try:
            response = await AsyncHTTPClient().fetch(
                self.url,
                method="POST",
                body=json.dumps(body),
                headers={
                    "Authorization": f"token {self.token}",
                    "Content-Type": "application/json",
                },
                request_timeout=REPORT_TIMEOUT,
                connect_timeout=REPORT_TIMEOUT,
                raise_error=False,
            )
        except OSError as e:
            log.warning("Refusal of %s not reported to the quota service: %s", refusal.address, e)
            return
        if response.code != 201:
            log.warning(
                "Refusal of %s not recorded: the quota service answered %s",
                refusal.address,
                response.code,
            )

    def handler(self):
        """The refusal page's handler: the plain 403, then the report in the background."""
        reporter = self

        class ReportedRefusal(plain_refusal_handler()):
            def on_finish(self):
                if reporter.due(self.refusal):
                    attempt = f"{self.request.method} {self.request.path}"
                    IOLoop.current().spawn_callback(reporter.send, self.refusal, attempt)

        return ReportedRefusal


def reporter_from_environment(environ=os.environ) -> RefusalReporter | None:
    if not environ.get(QUOTA_URL) or not environ.get("JUPYTERHUB_API_TOKEN"):
        return None
    return RefusalReporter(
        environ[QUOTA_URL],
        environ["JUPYTERHUB_API_TOKEN"],
        environ.get("JUPYTERHUB_SERVER_NAME", ""),
    )


def _jupyter_server_extension_points():
    return [{"module": EXTENSION}]


def _load_jupyter_server_extension(serverapp):
    policy = NetworkPolicy.instance()
    trusted = split_list(os.environ.get(TRUSTED)) if os.environ.get(APPLY) == "1" else None
    reporter = reporter_from_environment()
    if reporter is None:
        serverapp.log.warning(
            "Refusals stay in this log: no %s or API token to report them", QUOTA_URL
        )
    guard_application(
        serverapp.web_app,
        lambda request: decide(request, policy, trusted),
        reporter.handler() if reporter else None,
    )
    serverapp.log.info(
        "Network rules of use: banned %s; trusted addresses %s",
        ",".join(policy.banned_countries),
        "off" if trusted is None else (",".join(trusted) or "none registered"),
    )


# ---- the hub side: what the spawner gives the server ---------------------------------------


def _owner_access(spawner) -> dict | None:
    authenticator = getattr(spawner, "authenticator", None)
    return getattr(authenticator, "last_access", {}).get(spawner.user.name)


def _applies(spawner) -> str:
    authenticator = getattr(spawner, "authenticator", None)
    policy = getattr(authenticator, "network", None) or NetworkPolicy.instance()
    applies = policy.enforce_trusted_networks and trusted_networks_apply(_owner_access(spawner))
    return "1" if applies else "0"


def _trusted(spawner) -> str:
    return ",".join((_owner_access(spawner) or {}).get("trusted_networks") or [])


def environment(policy: NetworkPolicy) -> dict:
    """``c.Spawner.environment`` entries: the policy, and per server (callables, evaluated by
    the spawner at each start, after the pre-spawn refresh) the owner's trusted addresses."""
    return policy.environment() | {APPLY: _applies, TRUSTED: _trusted}


def server_args() -> list[str]:
    """``c.Spawner.args`` that load this extension in ``jupyterhub-singleuser``."""
    return [f"--ServerApp.jpserver_extensions={EXTENSION}=True"]
