"""Faults during metering, for real: processes killed with SIGKILL, PostgreSQL crash-restarted.

Each test runs a server of a real stack (hub, proxy, OIDC provider, quota service on
PostgreSQL), hurts it, stops the server, and then compares the ledger with the server's
lifetime: every period charged exactly once, nothing charged twice, and at most one
metering interval lost.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from quota_service.timewindow import utcnow
from spawner.points import cumulative_millipoints, whole_seconds
from tests.platform import QuotaDB, process_listening_on, wait_for
from tests.stack import Stack

pytestmark = pytest.mark.e2e
INTERVAL = 2
GRANT = 100_000


@pytest.fixture
def stack(tmp_path, postgres_server):
    url = postgres_server.create_database(f"faults_{time.monotonic_ns()}")
    platform = Stack(
        tmp_path / "state",
        quota_db_url=url,
        metering_interval=INTERVAL,
        extra_env={"AIPOWER_POLL_INTERVAL": "2", "AIPOWER_AUTH_REFRESH_AGE": "2"},
    )
    platform.start()
    yield platform
    platform.stop()


@pytest.fixture
def quota_db(stack):
    db = QuotaDB(stack.quota_db_url)
    yield db
    db.close()


def start_server(stack: Stack, quota_db: QuotaDB, username: str, number: str):
    project_id = quota_db.add_project(username, business_number=number, millipoints=GRANT)
    browser = stack.sign_in(username)
    api = stack.api(stack.token_for(browser, username))
    response = api.post(
        stack.url(f"/hub/api/users/{username}/server"),
        json={"gpu_vendor": "nvidia", "gpu_count": 1},
    )
    assert response.status_code in (201, 202), response.text
    wait_for(lambda: server(api, stack, username).get("ready"), 60, "server ready")
    return project_id, api


def server(api, stack, username) -> dict:
    return (
        api.get(stack.url(f"/hub/api/users/{username}"), timeout=10).json()["servers"].get("") or {}
    )


def stop_server(api, stack, username):
    asked = utcnow()
    api.delete(stack.url(f"/hub/api/users/{username}/server"), timeout=60)
    wait_for(lambda: not server(api, stack, username), 60, "server gone")
    return asked


def quota_service_up(stack) -> bool:
    try:
        return stack.client().get(stack.url("/services/quota/api/v1/openapi.yaml"), timeout=2).ok
    except OSError:
        return False


def check_ledger(quota_db: QuotaDB, project_id: int, username: str, stop_asked):
    [session] = quota_db.sessions(username)
    entries = quota_db.usage_entries(session.id)
    # every period once, in order, with no gap
    assert [e.period_index for e in entries] == list(range(len(entries)))
    assert [e.covers_from_seconds for e in entries[1:]] == [
        e.covers_to_seconds for e in entries[:-1]
    ]
    lifetime = whole_seconds((session.stopped_at - session.started_at).total_seconds())
    assert session.charged_seconds == lifetime
    charged = -sum(e.amount_millipoints for e in entries)
    assert charged == cumulative_millipoints(1, lifetime)  # nothing twice
    assert GRANT - quota_db.balance(project_id) == charged
    # at most one interval lost: the recorded stop is within an interval of the real one
    assert stop_asked.timestamp() - INTERVAL - 1 <= session.stopped_at.timestamp()
    return session


def test_the_quota_service_killed_during_metering_loses_nothing(stack, quota_db):
    project_id, api = start_server(stack, quota_db, "victim", "38602100")
    for _ in range(2):
        time.sleep(INTERVAL * 1.3)
        process_listening_on(stack.quota_port).send_signal(signal.SIGKILL)
        time.sleep(0.2)
        # the hub notices at its next poll of the service (30 s) and restarts it
        wait_for(lambda: quota_service_up(stack), 90, "the hub restarts its service")
    time.sleep(INTERVAL + 1)
    stop_asked = stop_server(api, stack, "victim")
    session = wait_for(
        lambda: (s := quota_db.sessions("victim")[-1]).stopped_at and s, 30, "session closed"
    )
    check_ledger(quota_db, project_id, "victim", stop_asked)
    assert session.charged_seconds >= 2 * INTERVAL * 1.3


def test_the_hub_killed_and_restarted_keeps_the_server_and_its_metering(stack, quota_db):
    project_id, api = start_server(stack, quota_db, "survivor", "12345675")
    time.sleep(INTERVAL + 1)
    hub = process_listening_on(stack.hub_port)
    hub.send_signal(signal.SIGKILL)
    stack.process.wait(30)  # the launcher ends with its hub
    wait_for(lambda: not quota_service_up(stack), 30, "the hub's service goes with it")
    time.sleep(2 * INTERVAL)  # the server runs on meanwhile, and is charged for it
    stack.stop()
    stack.start()
    # the restarted hub found the server running and resumed it: still one session
    assert server(api, stack, "survivor").get("ready")
    time.sleep(INTERVAL + 1)
    stop_asked = stop_server(api, stack, "survivor")
    wait_for(lambda: quota_db.sessions("survivor")[-1].stopped_at, 30, "session closed")
    session = check_ledger(quota_db, project_id, "survivor", stop_asked)
    assert session.charged_seconds >= 4 * INTERVAL + 2


def test_a_database_crash_restart_during_metering_loses_nothing(stack, quota_db, postgres_server):
    project_id, api = start_server(stack, quota_db, "steady", "24536806")
    time.sleep(INTERVAL + 1)
    postgres_server.restart()
    time.sleep(2 * INTERVAL + 1)
    postgres_server.restart()
    time.sleep(INTERVAL + 1)
    stop_asked = stop_server(api, stack, "steady")
    wait_for(lambda: quota_db.sessions("steady")[-1].stopped_at, 30, "session closed")
    check_ledger(quota_db, project_id, "steady", stop_asked)
    assert psutil.pid_exists(stack.process.pid)
