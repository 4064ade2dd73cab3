"""The little of JupyterHub's REST API that the quota service needs (stop servers)."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from .metering import RunningServer

log = logging.getLogger(__name__)


class HubAPI:
    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self._token = token

    async def stop_server(self, username: str, server_name: str) -> bool:
        """Ask the hub to stop a server; True when the hub accepted (or it was gone)."""
        path = f"/users/{quote(username, safe='')}/server"
        if server_name:
            path = f"/users/{quote(username, safe='')}/servers/{quote(server_name, safe='')}"
        try:
            await AsyncHTTPClient().fetch(
                self.api_url + path,
                method="DELETE",
                headers={"Authorization": f"token {self._token}"},
                request_timeout=30,
            )
        except HTTPClientError as e:
            if e.code in (400, 404):  # not running, or no such user: nothing to stop
                return True
            log.warning("hub refused to stop %s/%s: HTTP %s", username, server_name, e.code)
            return False
        except OSError as e:
            log.warning("hub unreachable to stop %s/%s: %s", username, server_name, e)
            return False
        return True

    async def running_servers(self, page_size: int = 500) -> dict[tuple[str, str], RunningServer]:
        """Every server the hub runs or is starting, by (user, server name), all pages."""
        running: dict[tuple[str, str], RunningServer] = {}
        offset = 0
        while True:
            response = await AsyncHTTPClient().fetch(
                f"{self.api_url}/users?state=active&offset={offset}&limit={page_size}",
                headers={
                    "Authorization": f"token {self._token}",
                    "Accept": "application/jupyterhub-pagination+json",
                },
                request_timeout=30,
            )
            page = json.loads(response.body)
            for user in page["items"]:
                for name, server in (user.get("servers") or {}).items():
                    running[(user["name"], name)] = running_server(server)
            following = page["_pagination"].get("next")
            if not following:
                return running
            offset = following["offset"]


def running_server(model: dict) -> RunningServer:
    """The parts of a hub server model that metering needs; GPU options as the spawner
    recorded them (strings when they came from the form)."""
    options = model.get("user_options") or {}
    count = options.get("gpu_count")
    started = model.get("started")
    return RunningServer(
        ready=bool(model.get("ready")),
        started=datetime.fromisoformat(started.replace("Z", "+00:00")) if started else None,
        gpu_vendor=options.get("gpu_vendor"),
        gpu_count=int(count) if str(count).isdigit() else None,
    )
