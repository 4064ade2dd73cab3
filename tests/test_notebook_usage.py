"""The balance inside JupyterLab (spawner/notebook): the server extension's arithmetic and
errors, the environment that turns it on, and a real jupyter_server serving it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from decimal import Decimal
from fnmatch import fnmatch
from pathlib import Path

import pytest
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer

from spawner.notebook import (
    LABEXTENSION_NAME,
    PACKAGE_DIR,
    notebook_environment,
    server_token_scopes,
)
from spawner.notebook.usage import UsageError, hours_left, pick_project, summarize, usage

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "server-token-for-the-test"


def project(**fields) -> dict:
    base = {
        "id": 1,
        "name": "示範智能 醫療影像模型訓練",
        "status": "approved",
        "balance_points": "996.667",
        "burn_rate_points_per_hour": "4",
        "window_end": "2026-04-01T00:00:00+08:00",
        "running_servers": [],
    }
    return base | fields


def server(username: str, server_name: str = "") -> dict:
    return {"username": username, "server_name": server_name, "gpu_count": 2}


# ---- arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "rate", "expected"),
    [
        ("996.667", "4", Decimal("249.166")),  # 249.16675 exactly: rounded down
        ("1000.000", "2", Decimal("500.000")),
        ("1000.000", "6", Decimal("166.666")),  # 166.666… : never promises more
        ("0.001", "4", Decimal("0.000")),
        ("0.004", "4", Decimal("0.001")),
        ("12345678901234567.890", "2", Decimal("6172839450617283.945")),  # no float, no context
        ("0.000", "2", Decimal("0.000")),
        ("-3.500", "2", Decimal("0.000")),
    ],
)
def test_hours_left_is_exact_and_rounded_down(balance, rate, expected):
    left = hours_left(balance, rate)
    assert left == expected
    assert str(left) == str(expected)  # three places, as shown


def test_hours_left_is_none_when_nothing_burns():
    assert hours_left("996.667", "0") is None


def test_a_fourth_decimal_place_is_refused_not_rounded():
    with pytest.raises(ValueError):
        hours_left("1.0005", "2")


def test_the_project_that_runs_this_server_is_shown():
    other = project(id=1, name="A", running_servers=[server("someone-else")])
    mine = project(id=2, name="B", running_servers=[server("trainee", "gpu")])
    assert pick_project([other, mine], "trainee", "gpu")["name"] == "B"
    # not running (yet): the approved project with the lowest id, as the quota service charges
    pending = project(id=1, name="P", status="pending")
    assert pick_project([mine, pending, other], "trainee", "")["name"] == "A"
    assert pick_project([pending], "trainee", "")["name"] == "P"
    assert pick_project([], "trainee", "") is None


def test_summary_is_compact():
    assert summarize(project(running_servers=[server("trainee")])) == {
        "project": {"id": 1, "name": "示範智能 醫療影像模型訓練"},
        "balance_points": "996.667",
        "burn_rate_points_per_hour": "4",
        "window_end": "2026-04-01T00:00:00+08:00",
        "hours_left_at_current_rate": "249.166",
    }


# ---- asking the quota service ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeQuota:
    """The quota service's GET /api/v1/projects, answering what the test sets."""

    def __init__(self):
        self.status, self.body, self.seen = 200, [project()], []
        fake = self

        class Projects(web.RequestHandler):
            def get(self):
                fake.seen.append(self.request.headers.get("Authorization"))
                self.set_status(fake.status)
                self.finish(json.dumps(fake.body))

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/services/quota"
        self.server = HTTPServer(web.Application([(r"/services/quota/api/v1/projects", Projects)]))
        self.server.listen(self.port, "127.0.0.1")

    def environ(self, **extra) -> dict[str, str]:
        return {
            "AIPOWER_QUOTA_URL": self.url,
            "JUPYTERHUB_API_TOKEN": TOKEN,
            "JUPYTERHUB_USER": "trainee",
            "JUPYTERHUB_SERVER_NAME": "",
        } | extra


@pytest.fixture
async def quota():
    fake = FakeQuota()
    yield fake
    fake.server.stop()


async def test_usage_asks_with_the_servers_own_token(quota):
    quota.body = [project(id=1, running_servers=[server("trainee")])]
    answer = await usage(quota.environ())
    assert quota.seen == [f"token {TOKEN}"]
    assert answer["balance_points"] == "996.667"
    assert answer["hours_left_at_current_rate"] == "249.166"


def bilingual(message: str) -> bool:
    return bool(re.search(r"[\u4e00-\u9fff]", message)) and " / " in message


async def test_quota_service_down_is_a_503_with_a_bilingual_message():
    environ = {
        "AIPOWER_QUOTA_URL": f"http://127.0.0.1:{free_port()}/services/quota",  # nobody there
        "JUPYTERHUB_API_TOKEN": TOKEN,
    }
    with pytest.raises(UsageError) as refused:
        await usage(environ, request_timeout=2)
    assert (refused.value.status, refused.value.reason) == (503, "quota-unavailable")
    assert bilingual(refused.value.message)
    assert "unavailable" in refused.value.message


@pytest.mark.parametrize("body", [{"not": "a list"}, [{"id": 1}], "<html>"])
async def test_a_broken_answer_is_a_503_too(quota, body):
    quota.body = body
    with pytest.raises(UsageError) as refused:
        await usage(quota.environ())
    assert refused.value.status == 503


async def test_a_quota_service_error_is_a_503(quota):
    quota.status, quota.body = 500, {"message": "boom"}
    with pytest.raises(UsageError) as refused:
        await usage(quota.environ())
    assert (refused.value.status, refused.value.reason) == (503, "quota-unavailable")


async def test_a_refused_token_is_a_502_with_the_services_message(quota):
    quota.status = 403
    quota.body = {"status": 403, "reason": "error", "message": "token 無效 / invalid token"}
    with pytest.raises(UsageError) as refused:
        await usage(quota.environ())
    assert (refused.value.status, refused.value.reason) == (502, "quota-refused")
    assert refused.value.message == "token 無效 / invalid token"


async def test_no_project_is_a_404(quota):
    quota.body = []
    with pytest.raises(UsageError) as refused:
        await usage(quota.environ())
    assert refused.value.status == 404 and bilingual(refused.value.message)


async def test_without_a_quota_url_or_token_nothing_is_asked(quota):
    for environ in (quota.environ(AIPOWER_QUOTA_URL=""), quota.environ(JUPYTERHUB_API_TOKEN="")):
        with pytest.raises(UsageError) as refused:
            await usage(environ)
        assert refused.value.reason == "not-configured" and bilingual(refused.value.message)
    assert quota.seen == []


# ---- how it is turned on ------------------------------------------------------------------


def test_server_token_scopes_are_jupyterhubs_default_plus_the_quota_service():
    from jupyterhub.roles import get_default_roles

    default = next(r for r in get_default_roles() if r["name"] == "server")["scopes"]
    assert set(default) == {"users:activity!user", "access:servers!server"}
    assert server_token_scopes("quota") == sorted(
        {"users:activity!user", "access:servers!server", "access:services!service=quota"}
    )


def test_notebook_environment_puts_ours_first_and_keeps_the_rest():
    env = notebook_environment(
        "http://quota:10101/services/quota/",
        package_dir="/opt/aipower/spawner/notebook",
        base={"JUPYTER_PATH": "/srv/jupyter"},
    )
    assert env == {
        "JUPYTER_PATH": os.pathsep.join(
            ["/opt/aipower/spawner/notebook/share/jupyter", "/srv/jupyter"]
        ),
        "JUPYTER_CONFIG_PATH": "/opt/aipower/spawner/notebook/etc/jupyter",
        "AIPOWER_QUOTA_URL": "http://quota:10101/services/quota",
    }


def test_the_built_labextension_is_committed_complete_and_packaged():
    built = PACKAGE_DIR / "share" / "jupyter" / "labextensions" / LABEXTENSION_NAME
    meta = json.loads((built / "package.json").read_text())
    assert meta["name"] == LABEXTENSION_NAME
    assert (built / meta["jupyterlab"]["_build"]["load"]).is_file()
    config = PACKAGE_DIR / "etc/jupyter/jupyter_server_config.d/aipower_hub_usage.json"
    assert json.loads(config.read_text()) == {
        "ServerApp": {"jpserver_extensions": {"spawner.notebook": True}}
    }
    # every file that must install is matched by pyproject's package-data
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["spawner.notebook"]
    for file in [*built.rglob("*"), config]:
        if file.is_file():
            relative = file.relative_to(PACKAGE_DIR).as_posix()
            assert any(fnmatch(relative, pattern) for pattern in patterns), relative


def test_the_local_spawner_turns_it_on():
    from types import SimpleNamespace

    from jupyterhub.objects import Hub
    from traitlets.config import Config

    from spawner.local import LocalGPUSpawner

    config = Config()
    config.QuotaServiceClient.url = "http://127.0.0.1:10101/services/quota"
    user = SimpleNamespace(name="trainee", id=1, url="/user/trainee/", settings={})
    spawner = LocalGPUSpawner(config=config, user=user, hub=Hub(), api_token=TOKEN)
    env = spawner.get_env()
    assert env["AIPOWER_QUOTA_URL"] == "http://127.0.0.1:10101/services/quota"
    assert env["JUPYTER_PATH"].split(os.pathsep)[0] == str(PACKAGE_DIR / "share" / "jupyter")
    assert env["JUPYTER_CONFIG_PATH"].split(os.pathsep)[0] == str(PACKAGE_DIR / "etc" / "jupyter")
    # c.Spawner.environment can send the server elsewhere
    spawner.environment = {"AIPOWER_QUOTA_URL": "http://proxy-public/services/quota"}
    assert spawner.get_env()["AIPOWER_QUOTA_URL"] == "http://proxy-public/services/quota"


# ---- a real jupyter_server ------------------------------------------------------------------


@pytest.fixture
def jupyter_server(tmp_path):
    """Starts ``jupyter server`` with the environment the spawner gives, its owner's token
    ``owner-secret``, and the quota URL the test names."""
    started = []

    def start(quota_url: str) -> str:
        port = free_port()
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "AIPOWER_"))
        } | notebook_environment(quota_url)
        env |= {
            "HOME": str(tmp_path),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
            "JUPYTERHUB_API_TOKEN": TOKEN,
            "JUPYTERHUB_USER": "trainee",
        }
        argv = [
            sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1",
            "--IdentityProvider.token=owner-secret", "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={tmp_path}",
        ]  # fmt: skip
        if os.geteuid() == 0:
            argv.append("--allow-root")
        with open(tmp_path / "server.log", "wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return base
            except OSError:
                time.sleep(0.2)
        raise TimeoutError((tmp_path / "server.log").read_text())

    yield start
    for process in started:
        process.terminate()
        process.wait(20)


async def get(url: str, token: str | None = None):
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        return await AsyncHTTPClient().fetch(url, headers=headers, raise_error=True)
    except HTTPClientError as e:
        return e.response


async def test_a_real_server_serves_the_owner_only_and_says_503_when_the_quota_is_down(
    jupyter_server, tmp_path
):
    base = jupyter_server(f"http://127.0.0.1:{free_port()}/services/quota")  # nobody there
    assert (await get(base + "/aipower/usage")).code == 403  # not the owner
    down = await get(base + "/aipower/usage", "owner-secret")
    assert down.code == 503
    assert down.headers["Content-Type"].startswith("application/json")
    body = json.loads(down.body)
    assert body["reason"] == "quota-unavailable" and bilingual(body["message"])
    assert "Traceback" not in (tmp_path / "server.log").read_text()
    # and JupyterLab finds the prebuilt extension through JUPYTER_PATH
    lab = await get(base + "/lab", "owner-secret")
    assert lab.code == 200
    page_config = json.loads(
        re.search(rb'id="jupyter-config-data"[^>]*>(.*?)</script>', lab.body, re.S).group(1)
    )
    names = [e["name"] for e in page_config["federated_extensions"]]
    assert LABEXTENSION_NAME in names


async def test_a_real_server_answers_from_the_quota_service(jupyter_server, quota):
    quota.body = [project(running_servers=[server("trainee")])]
    base = jupyter_server(quota.url)
    answer = await get(base + "/aipower/usage", "owner-secret")
    assert answer.code == 200, answer.body
    assert json.loads(answer.body) == summarize(quota.body[0])
    assert quota.seen == [f"token {TOKEN}"]
