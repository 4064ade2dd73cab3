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
"""

from __future__ import annotations

import os

from quota_service.network import (
    NetworkPolicy,
    NetworkRefusal,
    guard_application,
    is_platform_request,
    split_list,
    trusted_networks_apply,
    trusted_refusal,
)

EXTENSION = "authenticator.server_guard"
APPLY = "AIPOWER_TRUSTED_NETWORKS_APPLY"
TRUSTED = "AIPOWER_TRUSTED_NETWORKS"


def decide(request, policy: NetworkPolicy, trusted: list[str] | None) -> NetworkRefusal | None:
    """``trusted``: the owner's trusted addresses when the rule applies to them, else None."""
    if is_platform_request(request, policy):
        return None
    address = policy.client_of(request)
    refusal = policy.region_refusal(address)
    if refusal is None and trusted is not None:
        refusal = trusted_refusal(address, trusted)
    return refusal


def _jupyter_server_extension_points():
    return [{"module": EXTENSION}]


def _load_jupyter_server_extension(serverapp):
    policy = NetworkPolicy.instance()
    trusted = split_list(os.environ.get(TRUSTED)) if os.environ.get(APPLY) == "1" else None
    guard_application(serverapp.web_app, lambda request: decide(request, policy, trusted))
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
