"""The hub configuration's additions for the rules of use: the idle culler as a hub-managed
service with least privilege, and the network settings passed to the quota service."""

from __future__ import annotations

from pathlib import Path

import pytest
from jupyterhub.scopes import scope_definitions
from traitlets.config.loader import PyFileConfigLoader

from hub_config.roles import IDLE_CULLER_SCOPES, load_roles

HUB_CONFIG = Path(__file__).resolve().parent.parent / "hub_config"


def load_hub_config(monkeypatch, tmp_path, **env: str):
    monkeypatch.setenv("AIPOWER_STATE_DIR", str(tmp_path))
    for name in (
        "AIPOWER_IDLE_TIMEOUT",
        "AIPOWER_IDLE_CULL_EVERY",
        "AIPOWER_PROXY_NETWORKS",
        "AIPOWER_TRUSTED_PROXIES",
        "AIPOWER_BANNED_COUNTRIES",
        "AIPOWER_ENFORCE_TRUSTED_NETWORKS",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(HUB_CONFIG)).load_config()


def services(config) -> dict[str, dict]:
    return {s["name"]: s for s in config.JupyterHub.services}


def test_the_idle_culler_role_has_exactly_the_scopes_it_needs():
    (role,) = [r for r in load_roles() if r["name"] == "idle-culler"]
    assert sorted(role["scopes"]) == sorted(
        ["list:users", "read:users:activity", "read:servers", "delete:servers"]
    )
    assert role["services"] == ["idle-culler"]
    assert "admin:users" not in role["scopes"] and "servers" not in role["scopes"]
    assert IDLE_CULLER_SCOPES == role["scopes"]
    # every scope is one that JupyterHub knows
    for scope in role["scopes"]:
        assert scope in scope_definitions, scope


def test_the_hub_starts_the_idle_culler_with_the_timeout(monkeypatch, tmp_path):
    config = load_hub_config(monkeypatch, tmp_path)
    culler = services(config)["idle-culler"]
    assert culler["command"][1:] == [
        "-m",
        "hub_config.with_parent",
        "jupyterhub_idle_culler",
        "--timeout=3600",
        "--cull-every=300",
    ]
    assert "admin" not in culler and "api_token" not in culler
    # each role's services exist in the configuration
    for role in config.JupyterHub.load_roles:
        for service in role.get("services", []):
            assert service in services(config), service

    config = load_hub_config(monkeypatch, tmp_path, AIPOWER_IDLE_TIMEOUT="120")
    assert services(config)["idle-culler"]["command"][4:] == ["--timeout=120", "--cull-every=60"]
    with pytest.raises(ValueError, match="positive"):
        load_hub_config(monkeypatch, tmp_path, AIPOWER_IDLE_TIMEOUT="0")


def test_network_settings_reach_the_hub_and_the_quota_service(monkeypatch, tmp_path):
    config = load_hub_config(monkeypatch, tmp_path)
    assert config.NetworkPolicy.proxy_networks == ["127.0.0.1/32", "::1/128"]
    assert config.NetworkPolicy.trusted_proxies == []
    assert config.NetworkPolicy.enforce_trusted_networks is False
    quota_env = services(config)["quota"]["environment"]
    assert quota_env["AIPOWER_TRUSTED_PROXIES"] == ""
    assert quota_env["AIPOWER_BANNED_COUNTRIES"] == "CN,HK,MO"

    config = load_hub_config(
        monkeypatch,
        tmp_path,
        AIPOWER_TRUSTED_PROXIES="10.0.0.0/24 2001:db8:1::/64",
        AIPOWER_ENFORCE_TRUSTED_NETWORKS="1",
    )
    assert config.NetworkPolicy.trusted_proxies == ["10.0.0.0/24", "2001:db8:1::/64"]
    assert config.NetworkPolicy.enforce_trusted_networks is True
    quota_env = services(config)["quota"]["environment"]
    assert quota_env["AIPOWER_TRUSTED_PROXIES"] == "10.0.0.0/24,2001:db8:1::/64"
    assert quota_env["AIPOWER_ENFORCE_TRUSTED_NETWORKS"] == "1"


def test_a_service_started_by_a_process_that_is_killed_goes_with_it(tmp_path):
    """A real process tree: a stand-in hub starts `python -m hub_config.with_parent
    http.server` (a module that would serve forever), then is killed with SIGKILL."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from tests.platform import wait_for

    hub = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-m', 'hub_config.with_parent', "
            "'http.server', '0', '--bind', '127.0.0.1'], start_new_session=True); "
            "print(p.pid, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
        text=True,
    )
    service = psutil.Process(int(hub.stdout.readline()))
    try:
        wait_for(lambda: service.net_connections(kind="tcp"), 30, "the service listening")
        assert service.cmdline()[-4:] == ["http.server", "0", "--bind", "127.0.0.1"]
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        wait_for(lambda: not service.is_running() or service.status() == "zombie", 10, "gone")
    finally:
        hub.kill()
        if service.is_running():
            service.kill()
