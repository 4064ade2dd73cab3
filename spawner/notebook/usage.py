"""``GET <base_url>aipower/usage``: the owner's project balance, as the status bar shows it.

The single-user server asks the quota service (``GET <AIPOWER_QUOTA_URL>/api/v1/projects``)
with its own ``JUPYTERHUB_API_TOKEN`` and boils the answer down to the project that pays for
this server. The quota URL is passed explicitly by the spawner: ``JUPYTERHUB_API_URL`` names
the hub itself, and the hub does not route ``/services/`` (the proxy does), so it cannot be
derived from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from decimal import Decimal

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from . import QUOTA_URL_ENV

TIMEOUT = 5.0

UNAVAILABLE = (
    "配額服務暫時無法使用，無法取得點數。 / The quota service is unavailable, so the balance "
    "cannot be shown; please try again shortly."
)
NOT_CONFIGURED = (
    "這台伺服器沒有設定配額服務的位址。 / This server was not given the quota service's "
    f"address ({QUOTA_URL_ENV}) or a JupyterHub API token."
)
REFUSED = (
    "配額服務拒絕了這台伺服器的 token。 / The quota service refused this server's token "
    "(it needs the scope access:services!service=quota)."
)
NO_PROJECT = "你目前沒有計畫。 / You have no project."


class UsageError(Exception):
    """Why there is no balance to show: an HTTP status, a reason code and a bilingual message."""

    def __init__(self, status: int, reason: str, message: str):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"{status} {reason}: {message}")

    def as_json(self) -> dict:
        return {"status": self.status, "reason": self.reason, "message": self.message}


# ---- the arithmetic ---------------------------------------------------------------------


def millipoints(points: str | Decimal) -> int:
    """An exact number of points (at most three decimal places) as integer millipoints."""
    scaled = Decimal(points) * 1000
    if scaled != scaled.to_integral_value():
        raise ValueError(f"more than three decimal places: {points!r}")
    return int(scaled)


def hours_left(balance_points: str | Decimal, burn_rate_points_per_hour: str | Decimal):
    """Hours until the balance reaches zero at the current burn rate, exactly, rounded
    *down* to 0.001 hour (3.6 s) so that it never promises more than the balance holds.
    ``None`` when nothing burns; ``0.000`` when the balance is already at or below zero."""
    rate = millipoints(burn_rate_points_per_hour)
    if rate <= 0:
        return None
    balance = millipoints(balance_points)
    if balance <= 0:
        return Decimal("0.000")
    thousandths = balance * 1000 // rate  # integer floor division: no rounding anywhere
    return Decimal(thousandths).scaleb(-3)


def pick_project(projects: list[dict], username: str, server_name: str) -> dict | None:
    """The project that pays for this server: the one whose running servers list it;
    otherwise the approved project with the lowest id (the one the quota service charges);
    otherwise the first."""
    for project in projects:
        for server in project.get("running_servers") or []:
            if server.get("username") == username and server.get("server_name") == server_name:
                return project
    approved = [p for p in projects if p.get("status") == "approved"]
    candidates = sorted(approved or projects, key=lambda p: p.get("id", 0))
    return candidates[0] if candidates else None


def summarize(project: dict) -> dict:
    balance = project["balance_points"]
    rate = project.get("burn_rate_points_per_hour") or "0"
    left = hours_left(balance, rate)
    return {
        "project": {"id": project.get("id"), "name": project.get("name")},
        "balance_points": balance,
        "burn_rate_points_per_hour": rate,
        "window_end": project.get("window_end"),
        "hours_left_at_current_rate": None if left is None else str(left),
    }


# ---- asking the quota service ---------------------------------------------------------------


def _message_of(error: HTTPClientError) -> str:
    """The quota service's own bilingual message in a JSON error, if it sent one."""
    try:
        return str(json.loads(error.response.body)["message"])
    except (AttributeError, TypeError, ValueError, KeyError):
        return ""


async def fetch_projects(
    quota_url: str, token: str, request_timeout: float = TIMEOUT
) -> list[dict]:
    try:
        response = await AsyncHTTPClient().fetch(
            quota_url.rstrip("/") + "/api/v1/projects",
            headers={"Authorization": f"token {token}", "Accept": "application/json"},
            request_timeout=request_timeout,
            connect_timeout=request_timeout,
            follow_redirects=False,
        )
    except HTTPClientError as e:
        if e.code in (401, 403):
            raise UsageError(502, "quota-refused", _message_of(e) or REFUSED) from e
        raise UsageError(503, "quota-unavailable", UNAVAILABLE) from e
    except OSError as e:  # refused, unreachable, DNS
        raise UsageError(503, "quota-unavailable", UNAVAILABLE) from e
    try:
        projects = json.loads(response.body)
    except ValueError as e:
        raise UsageError(503, "quota-unavailable", UNAVAILABLE) from e
    if not isinstance(projects, list):
        raise UsageError(503, "quota-unavailable", UNAVAILABLE)
    return projects


async def usage(environ: Mapping[str, str] = os.environ, request_timeout: float = TIMEOUT) -> dict:
    """The answer of ``GET aipower/usage`` for the server described by ``environ``; raises
    :class:`UsageError` for every way of having nothing to show."""
    quota_url = environ.get(QUOTA_URL_ENV, "")
    token = environ.get("JUPYTERHUB_API_TOKEN", "")
    if not quota_url or not token:
        raise UsageError(503, "not-configured", NOT_CONFIGURED)
    projects = await fetch_projects(quota_url, token, request_timeout)
    project = pick_project(
        projects, environ.get("JUPYTERHUB_USER", ""), environ.get("JUPYTERHUB_SERVER_NAME", "")
    )
    if project is None:
        raise UsageError(404, "no-project", NO_PROJECT)
    try:
        return summarize(project)
    except (KeyError, ArithmeticError, ValueError, TypeError) as e:
        raise UsageError(503, "quota-unavailable", UNAVAILABLE) from e


# ---- the handler ----------------------------------------------------------------------------


class UsageHandler(APIHandler):
    """Only the server's owner gets here: jupyter_server's authentication, which under
    JupyterHub is the hub's OAuth with ``access:servers`` on this server."""

    def write_json(self, data: dict, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data, ensure_ascii=False))

    @web.authenticated
    async def get(self):
        try:
            answer = await usage()
        except UsageError as e:
            # an answer for the status bar, not a server error: one line, no traceback
            self.log.warning("aipower/usage: %s", e)
            return self.write_json(e.as_json(), e.status)
        self.write_json(answer)


def setup_handlers(web_app) -> None:
    route = url_path_join(web_app.settings["base_url"], "aipower", "usage")
    web_app.add_handlers(".*$", [(route, UsageHandler)])
