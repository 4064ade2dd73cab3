"""The hub side's client of the quota service (used by the authenticator and the spawners).

It authenticates with the API token of the hub's own JupyterHub service identity
(``aipower-hub-agent``), whose role grants only the ``custom:aipower:hub`` scope.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, Unicode, default
from traitlets.config import SingletonConfigurable


class QuotaServiceUnavailable(Exception):
    """The service could not be reached or failed (5xx): callers must fail closed."""


class QuotaRefusal(Exception):
    """The service said no (4xx), with a reason code and a message for the person."""

    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message
        super().__init__(message)


class QuotaClient:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    async def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = await AsyncHTTPClient().fetch(
                self.base_url + path,
                method=method,
                headers={
                    "Authorization": f"token {self._token}",
                    "Content-Type": "application/json",
                },
                body=None if body is None else json.dumps(body),
                request_timeout=self.timeout,
                connect_timeout=self.timeout,
            )
        except HTTPClientError as e:
            if e.code == 599 or e.code >= 500:
                raise QuotaServiceUnavailable(f"HTTP {e.code}") from e
            try:
                error = json.loads(e.response.body)
            except (AttributeError, TypeError, ValueError):
                error = {}
            raise QuotaRefusal(
                e.code, error.get("reason", "refused"), error.get("message", str(e))
            ) from e
        except OSError as e:
            raise QuotaServiceUnavailable(str(e)) from e
        return json.loads(response.body) if response.body else {}

    async def access(self, username: str, email: str = "") -> dict:
        path = f"/api/v1/internal/access/{quote(username, safe='')}"
        if email:
            path += "?" + urlencode({"email": email})
        return await self._request("GET", path)

    async def open_session(self, **request: object) -> dict:
        return await self._request("POST", "/api/v1/internal/sessions", request)

    async def report_refusal(self, *, username: str, server_name: str, reason: str) -> None:
        await self._request(
            "POST",
            "/api/v1/internal/refusals",
            {"username": username, "server_name": server_name, "reason": reason},
        )

    async def close_session(self, session_id: int, *, reason: str = "", void: bool = False) -> dict:
        """Stop metering a session; ``void`` for a server that never came up (no charge)."""
        return await self._request(
            "POST",
            f"/api/v1/internal/sessions/{session_id}/close",
            {"reason": reason, "void": void},
        )


class QuotaServiceClient(SingletonConfigurable):
    """Where the hub finds the quota service; shared by the authenticator and the spawners.

    Configure once, e.g. ``c.QuotaServiceClient.url = "http://quota:10101/services/quota"``.
    """

    url = Unicode(
        help="""Base URL of the quota service as the hub reaches it, e.g.
        http://127.0.0.1:10101/services/quota. Env: AIPOWER_QUOTA_URL.""",
    ).tag(config=True)

    @default("url")
    def _default_url(self):
        return os.environ.get("AIPOWER_QUOTA_URL", "http://127.0.0.1:10101/services/quota")

    token = Unicode(
        help="""API token of the hub's agent service (scope custom:aipower:hub only).
        Env: AIPOWER_HUB_AGENT_TOKEN. Never logged.""",
    ).tag(config=True)

    @default("token")
    def _default_token(self):
        return os.environ.get("AIPOWER_HUB_AGENT_TOKEN", "")

    timeout = Float(
        10.0, help="Seconds to wait for the quota service before failing closed, e.g. 10."
    ).tag(config=True)

    def client(self) -> QuotaClient:
        return QuotaClient(self.url, self.token, self.timeout)
